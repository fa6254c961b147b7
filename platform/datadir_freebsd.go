package platform

// lockHolders is not known on FreeBSD without procstat; the exclusive
// holder's recorded pid is used instead.
func lockHolders(string) []int { return nil }

func processCommand(int) string { return "" }
