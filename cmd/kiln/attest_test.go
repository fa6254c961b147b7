package main

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/kiln-build/kiln/api"
	"github.com/kiln-build/kiln/attest"
)

// TestArtifactVerifyOffline runs `kiln artifact verify` on files saved
// from the endpoints (no server): a group attested by two hosts passes
// --quorum 2 and names them; one host twice, or a changed byte, fails.
func TestArtifactVerifyOffline(t *testing.T) {
	dir := t.TempDir()
	content := []byte("package contents")
	sum := sha256.Sum256(content)
	artifact := filepath.Join(dir, "pkg.deb")
	if err := os.WriteFile(artifact, content, 0o644); err != nil {
		t.Fatal(err)
	}
	var keys []api.HostKey
	var members []api.RunAttestation
	for i, name := range []string{"h1", "h2"} {
		s, err := attest.GenerateKey()
		if err != nil {
			t.Fatal(err)
		}
		id, _ := s.KeyID()
		keys = append(keys, api.HostKey{Host: name, KeyID: id, PublicKey: s.PublicPEM(), Created: time.Now()})
		st, err := attest.Statement(&attest.Run{RunID: string(rune('1' + i)), Host: name, Job: api.Job{Name: "j", Image: "img"},
			Snapshot: "img@1", Started: time.Now(), Finished: time.Now(), Artifacts: []api.Artifact{{Path: "pkg.deb", SHA256: hex.EncodeToString(sum[:])}}})
		if err != nil {
			t.Fatal(err)
		}
		env, err := attest.Sign(context.Background(), s, st)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := json.Marshal(env)
		members = append(members, api.RunAttestation{Run: string(rune('1' + i)), Host: name, Envelope: b})
	}
	write := func(name string, v any) string {
		b, _ := json.Marshal(v)
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, b, 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	keysFile := write("keys.json", keys)
	group := write("group.json", api.GroupAttestation{Group: "g", Job: "j", Members: members})
	twice := write("twice.json", api.GroupAttestation{Group: "g", Job: "j", Members: []api.RunAttestation{members[0], members[0]}})
	tampered := filepath.Join(dir, "tampered.deb")
	if err := os.WriteFile(tampered, append([]byte("P"), content[1:]...), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name, file, att, want string
		ok                    bool
	}{
		{"two hosts", artifact, group, "pkg.deb: ok, vouched for by h1, h2", true},
		{"one host twice", artifact, twice, "vouched for by 1 distinct host(s) (h1), quorum is 2", false},
		{"changed byte", tampered, group, "no attestation names this digest", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			root := newRoot(&globals{})
			root.SetArgs([]string{"artifact", "verify", tc.file, "--attestation", tc.att, "--keys", keysFile, "--quorum", "2"})
			var out bytes.Buffer
			root.SetOut(&out)
			root.SetErr(&out)
			err := root.ExecuteContext(context.Background())
			if (err == nil) != tc.ok {
				t.Fatalf("err %v, output %s", err, out.String())
			}
			msg := out.String()
			if err != nil {
				msg += err.Error()
			}
			if !strings.Contains(msg, tc.want) {
				t.Fatalf("output %q lacks %q", msg, tc.want)
			}
		})
	}
}
