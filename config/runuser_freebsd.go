package config

// checkRunUser accepts any [run] user on FreeBSD: it is a user name of the
// jail's image, given to jexec -U.
func checkRunUser(string) error { return nil }
