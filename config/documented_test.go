package config

import (
	"os"
	"reflect"
	"regexp"
	"strings"
	"testing"
)

// Every key the config structs accept must be written out, set or
// commented, in the example file that documents it: contrib/worker.toml and
// contrib/server.toml are the config references.
func TestEveryKeyDocumented(t *testing.T) {
	for _, tc := range []struct {
		file string
		typ  reflect.Type
	}{
		{"../contrib/worker.toml", reflect.TypeOf(Host{})},
		{"../contrib/server.toml", reflect.TypeOf(Server{})},
	} {
		t.Run(tc.file, func(t *testing.T) {
			b, err := os.ReadFile(tc.file)
			if err != nil {
				t.Fatal(err)
			}
			text := string(b)
			for _, key := range tomlKeys(tc.typ) {
				k := regexp.QuoteMeta(key)
				re := regexp.MustCompile(`(?m)^\s*#?\s*(` + k + `\s*=|\[\[?` + k + `[\].])`) // [[k]]: an array of tables
				if !re.MatchString(text) {
					t.Errorf("%s does not document key %q", tc.file, key)
				}
			}
		})
	}
}

// tomlKeys lists the TOML keys of a config struct, descending into tables
// (struct fields and map-of-struct values).
func tomlKeys(t reflect.Type) []string {
	var keys []string
	for i := 0; i < t.NumField(); i++ {
		f := t.Field(i)
		name, _, _ := strings.Cut(f.Tag.Get("toml"), ",")
		if name == "" || name == "-" {
			continue
		}
		keys = append(keys, name)
		ft := f.Type
		if ft.Kind() == reflect.Map {
			ft = ft.Elem()
		}
		if ft.Kind() == reflect.Struct && ft.PkgPath() == t.PkgPath() {
			keys = append(keys, tomlKeys(ft)...)
		}
	}
	return keys
}
