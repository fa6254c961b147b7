package attest_test

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/secure-systems-lab/go-securesystemslib/dsse"

	"github.com/kiln-build/kiln/api"
	"github.com/kiln-build/kiln/attest"
)

var finished = time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)

func digest(b []byte) string { s := sha256.Sum256(b); return hex.EncodeToString(s[:]) }

// host is an enrolled host of a test: its key file and exported key.
type host struct {
	name   string
	signer *attest.Signer
	key    api.HostKey
}

func newHost(t *testing.T, name string) host {
	t.Helper()
	path := filepath.Join(t.TempDir(), "signing.key")
	if _, err := attest.GenerateKeyFile(path); err != nil {
		t.Fatal(err)
	}
	st, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if st.Mode().Perm() != 0o600 {
		t.Fatalf("key file mode %04o, want 0600", st.Mode().Perm())
	}
	s, err := attest.LoadKeyFile(path)
	if err != nil {
		t.Fatal(err)
	}
	pub, err := os.ReadFile(path + attest.PublicKeySuffix)
	if err != nil {
		t.Fatal(err)
	}
	if string(pub) != s.PublicPEM() {
		t.Fatal("public key file does not hold the private key's public key")
	}
	id, _ := s.KeyID()
	return host{name: name, signer: s, key: api.HostKey{Host: name, KeyID: id, PublicKey: string(pub), Created: finished.Add(-time.Hour)}}
}

func (h host) sign(t *testing.T, arts ...api.Artifact) *dsse.Envelope {
	t.Helper()
	st, err := attest.Statement(&attest.Run{
		ServerID: "0123456789abcdef", RunID: "42", Attempt: 1, Host: h.name, Version: "test",
		Job:      api.Job{Name: "hello", Image: "debian@1", Script: "echo hi > /out/a", Inputs: []api.Input{{Path: "src.tar", SHA256: digest([]byte("src"))}}},
		Revision: 3, Snapshot: "debian@1", Arch: "amd64", Isolation: "container",
		Variations: map[string]string{"TZ": "UTC"}, HostFacts: map[string]string{"kernel": "6.1", "memory_bytes": "1"},
		Started: finished.Add(-time.Minute), Finished: finished, Artifacts: arts,
	})
	if err != nil {
		t.Fatal(err)
	}
	env, err := attest.Sign(context.Background(), h.signer, st)
	if err != nil {
		t.Fatal(err)
	}
	return env
}

// pae is DSSE's pre-authentication encoding, written here from the spec
// (github.com/secure-systems-lab/dsse protocol.md) and not taken from
// the library under test.
func pae(payloadType string, payload []byte) []byte {
	return fmt.Appendf(nil, "DSSEv1 %d %s %d %s", len(payloadType), payloadType, len(payload), payload)
}

// independentVerify checks env's first signature with crypto/ed25519
// over a hand-written PAE.
func independentVerify(env *dsse.Envelope, pub ed25519.PublicKey) bool {
	payload, err := base64.StdEncoding.DecodeString(env.Payload)
	if err != nil {
		return false
	}
	sig, err := base64.StdEncoding.DecodeString(env.Signatures[0].Sig)
	if err != nil {
		return false
	}
	return ed25519.Verify(pub, pae(env.PayloadType, payload), sig)
}

func TestSignedStatementVerifiesIndependently(t *testing.T) {
	h := newHost(t, "h1")
	art := []byte("artifact bytes")
	env := h.sign(t, api.Artifact{Path: "a", SHA256: digest(art)})
	pub := h.signer.Public().(ed25519.PublicKey)
	if !independentVerify(env, pub) {
		t.Fatal("the envelope does not verify with an independent PAE + ed25519 check")
	}
	payload, _ := base64.StdEncoding.DecodeString(env.Payload)
	var st map[string]any
	if err := json.Unmarshal(payload, &st); err != nil {
		t.Fatal(err)
	}
	if st["_type"] != attest.StatementType || st["predicateType"] != attest.PredicateType {
		t.Fatalf("statement type %v predicate %v", st["_type"], st["predicateType"])
	}
	for _, want := range []string{`"buildDefinition"`, `"externalParameters"`, `"script_sha256"`, `"resolvedDependencies"`, `"finishedOn"`, `"kernel"`, `"kiln-snapshot:debian@1"`} {
		if !bytes.Contains(payload, []byte(want)) {
			t.Errorf("statement lacks %s: %s", want, payload)
		}
	}
	if bytes.Contains(payload, []byte("memory_bytes")) {
		t.Errorf("statement carries a volatile host fact: %s", payload)
	}
	keys, err := attest.NewKeySet([]api.HostKey{h.key})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := attest.VerifyEnvelope(context.Background(), env, keys); err != nil {
		t.Fatalf("VerifyEnvelope: %v", err)
	}

	// One byte of the statement changed: neither check accepts it.
	tampered := *env
	p := bytes.Replace(payload, []byte(digest(art)), []byte(digest([]byte("artifact byteS"))), 1)
	tampered.Payload = base64.StdEncoding.EncodeToString(p)
	if independentVerify(&tampered, pub) {
		t.Fatal("independent check accepts a changed statement")
	}
	if _, err := attest.VerifyEnvelope(context.Background(), &tampered, keys); err == nil || !strings.Contains(err.Error(), "does not verify") {
		t.Fatalf("VerifyEnvelope of a changed statement: %v", err)
	}
	// One byte of the artifact changed: its digest is no subject.
	_, err = attest.Verify(context.Background(), []attest.File{{Name: "a", SHA256: digest([]byte("artifact byteS"))}}, []*dsse.Envelope{env}, keys, 1)
	if err == nil || !strings.Contains(err.Error(), "no attestation names this digest") {
		t.Fatalf("Verify of a changed artifact: %v", err)
	}
}

func TestVerifyQuorum(t *testing.T) {
	ctx := context.Background()
	h1, h2, stranger := newHost(t, "h1"), newHost(t, "h2"), newHost(t, "h3")
	art := []byte("the artifact")
	sub := api.Artifact{Path: "out/a.deb", SHA256: digest(art)}
	file := attest.File{Name: "a.deb", SHA256: sub.SHA256}
	revokedBefore := h2.key
	revokedBefore.Revoked = finished.Add(-time.Second)
	revokedAfter := h2.key
	revokedAfter.Revoked = finished.Add(time.Hour)
	// A host claiming to be another: h3's key exported under h1's name
	// signs a statement naming h3 as builder.
	for _, tc := range []struct {
		name    string
		keys    []api.HostKey
		envs    []*dsse.Envelope
		file    attest.File
		wantErr string // "" accepts
		hosts   []string
	}{
		{"two distinct hosts", []api.HostKey{h1.key, h2.key}, []*dsse.Envelope{h1.sign(t, sub), h2.sign(t, sub)}, file, "", []string{"h1", "h2"}},
		{"key revoked after the run finished", []api.HostKey{h1.key, revokedAfter}, []*dsse.Envelope{h1.sign(t, sub), h2.sign(t, sub)}, file, "", []string{"h1", "h2"}},
		{"one host twice", []api.HostKey{h1.key, h2.key}, []*dsse.Envelope{h1.sign(t, sub), h1.sign(t, sub)}, file, "vouched for by 1 distinct host(s) (h1), quorum is 2", nil},
		{"unknown key", []api.HostKey{h1.key, h2.key}, []*dsse.Envelope{h1.sign(t, sub), stranger.sign(t, sub)}, file, "signed by unknown key " + stranger.key.KeyID, nil},
		{"key revoked before the run finished", []api.HostKey{h1.key, revokedBefore}, []*dsse.Envelope{h1.sign(t, sub), h2.sign(t, sub)}, file, "of host h2, revoked", nil},
		{"tampered file", []api.HostKey{h1.key, h2.key}, []*dsse.Envelope{h1.sign(t, sub), h2.sign(t, sub)}, attest.File{Name: "a.deb", SHA256: digest([]byte("the artifacT"))}, "a.deb (sha256", nil},
		{"key exported under another host's name", []api.HostKey{h1.key, {Host: "h2", PublicKey: stranger.key.PublicKey}}, []*dsse.Envelope{h1.sign(t, sub), stranger.sign(t, sub)}, file, `names builder`, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			keys, err := attest.NewKeySet(tc.keys)
			if err != nil {
				t.Fatal(err)
			}
			res, err := attest.Verify(ctx, []attest.File{tc.file}, tc.envs, keys, 2)
			if tc.wantErr == "" {
				if err != nil {
					t.Fatalf("refused: %v", err)
				}
				if got := strings.Join(res[0].Hosts, ","); got != strings.Join(tc.hosts, ",") {
					t.Fatalf("hosts %s, want %v", got, tc.hosts)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Fatalf("error %v, want one containing %q", err, tc.wantErr)
			}
		})
	}
}

func TestKeyFiles(t *testing.T) {
	t.Run("group-readable key refused", func(t *testing.T) {
		path := filepath.Join(t.TempDir(), "k")
		if _, err := attest.GenerateKeyFile(path); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(path, 0o640); err != nil {
			t.Fatal(err)
		}
		if _, err := attest.LoadKeyFile(path); err == nil || !strings.Contains(err.Error(), "chmod 600") {
			t.Fatalf("LoadKeyFile of a 0640 key: %v", err)
		}
	})
	t.Run("key id must match the public key", func(t *testing.T) {
		h1, h2 := newHost(t, "h1"), newHost(t, "h2")
		k := h1.key
		k.KeyID = h2.key.KeyID
		if _, err := attest.NewKeySet([]api.HostKey{k}); err == nil {
			t.Fatal("a key exported with another key's id was accepted")
		}
	})
	t.Run("group attestation file", func(t *testing.T) {
		h1, h2 := newHost(t, "h1"), newHost(t, "h2")
		sub := api.Artifact{Path: "a", SHA256: digest([]byte("x"))}
		var g api.GroupAttestation
		for i, h := range []host{h1, h2} {
			b, _ := json.Marshal(h.sign(t, sub))
			g.Members = append(g.Members, api.RunAttestation{Run: fmt.Sprint(i), Host: h.name, Envelope: b})
		}
		data, _ := json.Marshal(g)
		envs, err := attest.ReadEnvelopes(data)
		if err != nil || len(envs) != 2 {
			t.Fatalf("ReadEnvelopes: %d, %v", len(envs), err)
		}
		keys, _ := attest.NewKeySet([]api.HostKey{h1.key, h2.key})
		if _, err := attest.Verify(context.Background(), []attest.File{{Name: "a", SHA256: sub.SHA256}}, envs, keys, 2); err != nil {
			t.Fatal(err)
		}
	})
}

// TestStatementImageAndTools: a run pinned to a server-held image version
// names it with its tar digest among the dependencies, and the runc and
// qemu versions among the host facts; volatile facts stay out.
func TestStatementImageAndTools(t *testing.T) {
	for _, c := range []struct {
		name, image, digest string
		want, wantNot       []string
	}{
		{name: "server-held image", image: "debian@7", digest: "sha256:" + strings.Repeat("ab", 32),
			want: []string{`"name":"image:debian@7"`, `"sha256":"` + strings.Repeat("ab", 32) + `"`}},
		{name: "host-local image", wantNot: []string{`"image:debian@7"`}},
	} {
		t.Run(c.name, func(t *testing.T) {
			st, err := attest.Statement(&attest.Run{
				ServerID: "s", RunID: "1", Attempt: 1, Host: "h", Job: api.Job{Name: "j", Image: "debian", Script: "x"},
				Snapshot: "debian@20260101", Image: c.image, ImageDigest: c.digest, Arch: "amd64",
				HostFacts: map[string]string{"runc": "runc version 1.1.12", "qemu_user": "arm64=qemu-aarch64 version 7.2.11", "memory_bytes": "1"},
				Started:   finished.Add(-time.Minute), Finished: finished, Artifacts: []api.Artifact{{Path: "a", SHA256: digest([]byte("a"))}},
			})
			if err != nil {
				t.Fatal(err)
			}
			s := string(st)
			for _, w := range append(c.want, `"runc":"runc version 1.1.12"`, `"qemu_user":"arm64=qemu-aarch64 version 7.2.11"`, `"uri":"kiln-snapshot:debian@20260101"`) {
				if !strings.Contains(s, w) {
					t.Errorf("statement lacks %s:\n%s", w, s)
				}
			}
			for _, w := range append(c.wantNot, "memory_bytes") {
				if strings.Contains(s, w) {
					t.Errorf("statement has %s:\n%s", w, s)
				}
			}
		})
	}
}
