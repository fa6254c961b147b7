package freebsd

import "github.com/kiln-build/kiln/config"

// OptionsFromConfig maps the host config's [jail] section, and the job
// user of [run], to Options. The user must be a name in the image's
// passwd: jexec -U looks it up inside the jail.
func OptionsFromConfig(h *config.Host) Options {
	return Options{
		ConfDir:      h.Jail.ConfDir,
		DevfsRuleset: h.Jail.DevfsRuleset,
		User:         h.Run.User,
		Securelevel:  h.Jail.Securelevel,
		Allow:        h.Jail.Allow,
	}
}
