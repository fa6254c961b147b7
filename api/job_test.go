package api

import (
	"bytes"
	"encoding/json"
	"errors"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/BurntSushi/toml"
)

const goodJob = `
name = "hello"
image = "bookworm"
script = "echo hi > /out/x"
timeout = "30m"
artifacts = ["*.txt"]
[env]
FOO = "bar"
[resources]
memory = "2GiB"
cpus = 2
pids = 4096
[constraints]
os = "linux"
labels = { disk = "ssd" }
[[inputs]]
path = "src/hello.dsc"
sha256 = "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824"
[hooks]
post = ["lintian"]
`

func TestParseJobFileGood(t *testing.T) {
	j, err := ParseJobFile([]byte(goodJob))
	if err != nil {
		t.Fatal(err)
	}
	if j.Resources.Memory != 2<<30 || j.TimeoutOrDefault() != 30*time.Minute || j.Constraints.Labels["disk"] != "ssd" || j.Hooks.Post[0] != "lintian" {
		t.Fatalf("parsed wrong: %+v", j)
	}
}

func TestParseJobFileIsolation(t *testing.T) {
	base := "name = \"j\"\nimage = \"img\"\nscript = \"true\"\n"
	for _, tt := range []struct{ file, want string }{
		{base, ""},
		{base + "isolation = \"container\"\n", IsolationContainer},
		{base + "isolation = \"gvisor\"\n", IsolationGVisor},
		{base + "isolation = \"vm\"\n", IsolationVM},
		{base + "isolation = \"gvisor\"\n[resources]\nnetwork = \"bridge\"\n", IsolationGVisor},
		{base + "isolation = \"vm\"\n[resources]\nnetwork = \"bridge\"\n", IsolationVM},
	} {
		j, err := ParseJobFile([]byte(tt.file))
		if err != nil {
			t.Fatal(err)
		}
		if got := j.Isolation; got != tt.want {
			t.Errorf("%q: isolation %q, want %q", tt.file, got, tt.want)
		}
	}
}

func TestParseJobFileBad(t *testing.T) {
	base := "name = \"j\"\nimage = \"img\"\nscript = \"true\"\n"
	tests := []struct{ name, file, want string }{
		{"unknown key", base + "timout = \"1m\"\n", `line 4: unknown key "timout"`},
		{"unknown nested key", base + "[resources]\nmemroy = \"1GiB\"\n", `unknown key "resources.memroy"`},
		{"missing image", "name = \"j\"\nscript = \"true\"\n", `missing key "image"`},
		{"missing name", "image = \"i\"\nscript = \"true\"\n", `missing key "name"`},
		{"empty script", "name = \"j\"\nimage = \"i\"\nscript = \"  \\n\"\n", "script is empty"},
		{"bad duration", base + "timeout = \"ages\"\n", "bad duration"},
		{"zero duration", base + "timeout = \"0s\"\n", "must be positive"},
		{"bad size", base + "[resources]\nmemory = \"lots\"\n", "bad size"},
		{"cache path", base + "caches = [\"/var/cache/apt\"]\n", "cache name"},
		{"cache twice", base + "caches = [\"apt\", \"apt\"]\n", "named twice"},
		{"negative cpus", base + "[resources]\ncpus = -1\n", "must not be negative"},
		{"negative pids", base + "[resources]\npids = -5\n", "must not be negative"},
		{"tiny disk", base + "[resources]\ndisk = \"4k\"\n", "1MiB minimum"},
		{"image slash", "name = \"j\"\nimage = \"a/b\"\nscript = \"true\"\n", "image"},
		{"image dotdot", "name = \"j\"\nimage = \"..\"\nscript = \"true\"\n", "image"},
		{"name dotdot", "name = \"a..b\"\nimage = \"i\"\nscript = \"true\"\n", "name"},
		{"input traversal", base + "[[inputs]]\npath = \"../etc/passwd\"\nsha256 = \"" + strings.Repeat("a", 64) + "\"\n", "escapes"},
		{"input absolute", base + "[[inputs]]\npath = \"/etc/passwd\"\nsha256 = \"" + strings.Repeat("a", 64) + "\"\n", "absolute"},
		{"input bad sha", base + "[[inputs]]\npath = \"x\"\nsha256 = \"xyz\"\n", "sha256"},
		{"artifact escape", base + "artifacts = [\"../x\"]\n", "artifacts"},
		{"reserved env", base + "[env]\nKILN_RUN = \"x\"\n", "reserved"},
		{"reproduce one", base + "reproduce = 1\n", "reproduce"},
		{"hook name", base + "[hooks]\npost = [\"../bin/sh\"]\n", "hook"},
		{"syntax", "name = \n", "line 1"},
		{"wrong type", base + "[resources]\ncpus = \"two\"\n", "cpus"},
		{"bad os", base + "[constraints]\nos = \"windows\"\n", "constraints.os"},
		{"bad isolation", base + "isolation = \"chroot\"\n", `isolation "chroot": want container, gvisor or vm`},
		{"bad network", base + "[resources]\nnetwork = \"nat\"\n", `resources.network "nat"`},
		{"network number", base + "[resources]\nnetwork = 1\n", "resources.network"},
		{"gvisor host network", base + "isolation = \"gvisor\"\n[resources]\nnetwork = \"host\"\n", `network "host" with isolation "gvisor"`},
		{"vm on the host's network", base + "isolation = \"vm\"\n[resources]\nnetwork = \"host\"\n", `network "host" with isolation "vm"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := ParseJobFile([]byte(tt.file))
			if err == nil {
				t.Fatal("accepted")
			}
			if !errors.Is(err, ErrInvalidJob) {
				t.Errorf("error does not wrap ErrInvalidJob: %v", err)
			}
			if !strings.Contains(err.Error(), tt.want) {
				t.Errorf("error %q does not mention %q", err, tt.want)
			}
			if strings.Contains(err.Error(), "\n") {
				t.Errorf("error is not one line: %q", err)
			}
		})
	}
}

func TestNetworkModes(t *testing.T) {
	base := "name = \"j\"\nimage = \"img\"\nscript = \"true\"\n"
	tests := []struct {
		name, value string // value is "" for no key
		want        string // Mode()
		wire        string // JSON of the resources
	}{
		{"default", "", "none", `{}`},
		{"none", `"none"`, "none", `{"network":"none"}`},
		{"bridge", `"bridge"`, "bridge", `{"network":"bridge"}`},
		{"host", `"host"`, "host", `{"network":"host"}`},
		{"old true", "true", "bridge", `{"network":"bridge"}`},
		{"old false", "false", "none", `{"network":"none"}`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			file := base
			if tt.value != "" {
				file += "[resources]\nnetwork = " + tt.value + "\n"
			}
			j, err := ParseJobFile([]byte(file))
			if err != nil {
				t.Fatal(err)
			}
			if got := j.Resources.Network.Mode(); got != tt.want {
				t.Errorf("mode %q, want %q", got, tt.want)
			}
			b, err := json.Marshal(j.Resources)
			if err != nil {
				t.Fatal(err)
			}
			if string(b) != tt.wire {
				t.Errorf("wire form %s, want %s", b, tt.wire)
			}
			var back Resources
			if err := json.Unmarshal(b, &back); err != nil || back != j.Resources {
				t.Errorf("round trip: %+v %v, want %+v", back, err, j.Resources)
			}
		})
	}
	// A job an older server stored says true or false.
	for old, want := range map[string]string{`{"network":true}`: "bridge", `{"network":false}`: "none", `{"network":null}`: "none"} {
		var r Resources
		if err := json.Unmarshal([]byte(old), &r); err != nil || r.Network.Mode() != want {
			t.Errorf("%s: %q %v, want %q", old, r.Network.Mode(), err, want)
		}
	}
	var r Resources
	if err := json.Unmarshal([]byte(`{"network":7}`), &r); err == nil {
		t.Errorf("network 7 accepted")
	}
	j := Job{Name: "j", Image: "i", Script: "true", Resources: Resources{Network: "nat"}}
	if err := j.Validate(); !errors.Is(err, ErrInvalidJob) {
		t.Errorf("Validate of network nat: %v", err)
	}
}

func TestParseSize(t *testing.T) {
	for in, want := range map[string]Size{"4096": 4096, "2GiB": 2 << 30, "512MiB": 512 << 20, "1G": 1 << 30, "100k": 100 << 10, "1.5GiB": 3 << 29} {
		if got, err := ParseSize(in); err != nil || got != want {
			t.Errorf("%s: %d %v, want %d", in, got, err, want)
		}
	}
}

func TestSizeString(t *testing.T) {
	for in, want := range map[Size]string{100: "100B", 64 << 30: "64GiB", 3 << 29: "1.5GiB", 512 << 20: "512MiB", 100 << 40: "100TiB", 1<<30 + 1: "1GiB"} {
		if got := in.String(); got != want {
			t.Errorf("%d: %q, want %q", int64(in), got, want)
		}
	}
}

func TestLimitsOn(t *testing.T) {
	def := Limits{Memory: 2 << 30, Pids: 4096, Timeout: Duration(DefaultTimeout), Disk: 10 << 30}
	most := Limits{Memory: 16 << 30, CPUs: 4, Pids: 32768, Timeout: Duration(24 * time.Hour), Disk: 100 << 30}
	tests := []struct {
		name string
		job  Job
		want Limits
		over string
	}{
		{"nothing asked", Job{}, def, ""},
		{"some asked", Job{Resources: Resources{Memory: 8 << 30, CPUs: 2}}, Limits{Memory: 8 << 30, CPUs: 2, Pids: 4096, Timeout: def.Timeout, Disk: 10 << 30}, ""},
		{"memory over", Job{Resources: Resources{Memory: 64 << 30}}, Limits{}, "memory=64GiB (max 16GiB)"},
		{"cpus over", Job{Resources: Resources{CPUs: 8}}, Limits{}, "cpus=8 (max 4)"},
		{"pids over", Job{Resources: Resources{Pids: 1 << 20}}, Limits{}, "pids=1048576 (max 32768)"},
		{"timeout over", Job{Timeout: Duration(48 * time.Hour)}, Limits{}, "timeout=48h0m0s (max 24h0m0s)"},
		{"disk over", Job{Resources: Resources{Disk: 1 << 40}}, Limits{}, "disk=1TiB (max 100GiB)"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := tt.job.LimitsOn(def, most)
			if tt.over != "" {
				if !errors.Is(err, ErrOverLimit) || !strings.Contains(err.Error(), tt.over) {
					t.Fatalf("err = %v, want ErrOverLimit naming %q", err, tt.over)
				}
				return
			}
			if err != nil || got != tt.want {
				t.Fatalf("got %+v, %v; want %+v", got, err, tt.want)
			}
		})
	}
}

// TestParseJobFileReproduce: reproduce is a number or a [reproduce] table
// whose vary and keep name variations; both forms survive a TOML round
// trip (job show), and Varied is what a group applies.
func TestParseJobFileReproduce(t *testing.T) {
	const head = "name = \"t\"\nimage = \"i\"\nscript = \"s\"\ntimeout = \"1h\"\n"
	tests := []struct {
		name    string
		file    string
		wantErr string // "" for a good file
		runs    int
		varied  []string
	}{
		{"number", "reproduce = 2\n", "", 2, VariationNames},
		{"table", "[reproduce]\nruns = 3\nkeep = [\"cpus\", \"shell\"]\n", "", 3,
			[]string{"timezone", "locale", "umask", "user", "build_path", "hostname", "domain", "home", "aslr", "kernel", "user_group", "time"}},
		{"vary only", "[reproduce]\nruns = 2\nvary = [\"home\", \"umask\"]\n", "", 2, []string{"umask", "home"}},
		{"vary less keep", "[reproduce]\nruns = 2\nvary = [\"home\", \"umask\"]\nkeep = [\"home\"]\n", "", 2, []string{"umask"}},
		{"unknown variation", "[reproduce]\nruns = 2\nvary = [\"moon\"]\n", "reproduce.vary: \"moon\" is not a variation", 0, nil},
		{"twice", "[reproduce]\nruns = 2\nkeep = [\"home\", \"home\"]\n", "given twice", 0, nil},
		{"unknown key", "[reproduce]\nruns = 2\nvarry = [\"home\"]\n", "unknown key \"reproduce.varry\"", 0, nil},
		{"runs 1", "[reproduce]\nruns = 1\n", "reproduce 1", 0, nil},
		{"runs 17", "[reproduce]\nruns = 17\n", "reproduce.runs", 0, nil},
		{"not a list", "[reproduce]\nruns = 2\nvary = \"home\"\n", "want a list", 0, nil},
		{"not names", "[reproduce]\nruns = 2\nvary = [1]\n", "want a list", 0, nil},
		{"string", "reproduce = \"2\"\n", "want a number or a table", 0, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			j, err := ParseJobFile([]byte(head + tt.file))
			if tt.wantErr != "" {
				if !errors.Is(err, ErrInvalidJob) || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("err = %v, want ErrInvalidJob with %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if j.Reproduce != tt.runs || !slices.Equal(j.Varied(), tt.varied) {
				t.Fatalf("runs %d varied %v, want %d %v", j.Reproduce, j.Varied(), tt.runs, tt.varied)
			}
			var b bytes.Buffer
			if err := toml.NewEncoder(&b).Encode(j); err != nil {
				t.Fatal(err)
			}
			back, err := ParseJobFile(b.Bytes())
			if err != nil {
				t.Fatalf("round trip of\n%s: %v", b.String(), err)
			}
			if back.Reproduce != j.Reproduce || !slices.Equal(back.Vary, j.Vary) || !slices.Equal(back.Keep, j.Keep) {
				t.Fatalf("round trip: %+v, want %+v", back, j)
			}
		})
	}
}

// What `kiln job info` writes must read back as the same job, with or
// without the optional keys (a job without a timeout once came out as
// timeout = "0s", which the parser refuses).
func TestJobTOMLRoundTrip(t *testing.T) {
	tests := []struct{ name, file string }{
		{"every key", goodJob},
		{"no timeout", "name = \"bare\"\nimage = \"busybox\"\nscript = \"true\"\n"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			j, err := ParseJobFile([]byte(tt.file))
			if err != nil {
				t.Fatal(err)
			}
			var b bytes.Buffer
			if err := toml.NewEncoder(&b).Encode(j); err != nil {
				t.Fatal(err)
			}
			back, err := ParseJobFile(b.Bytes())
			if err != nil {
				t.Fatalf("written as\n%s\nread back: %v", b.String(), err)
			}
			if back.Name != j.Name || back.Timeout != j.Timeout || back.Script != j.Script {
				t.Errorf("read back %+v, want %+v", back, j)
			}
		})
	}
}
