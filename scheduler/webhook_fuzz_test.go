package scheduler

import (
	"net/http"
	"testing"

	"github.com/kiln-build/kiln/api"
)

// FuzzWebhookDelivery: whatever the headers and body, checking and reading
// a delivery never panics; a body not signed with the secret is refused;
// and what an accepted push puts in a run's environment is bounded
// printable text, a ref under refs/ and a hex commit.
func FuzzWebhookDelivery(f *testing.F) {
	secret := []byte("fuzz-secret-0123456789")
	f.Add(0, "push", "d-1", []byte(`{"ref":"refs/heads/main","after":"0123456789abcdef0123456789abcdef01234567","repository":{"full_name":"o/r","clone_url":"https://x/o/r.git"}}`), true)
	f.Add(2, "Push Hook", "u-1", []byte(`{"ref":"refs/tags/v1","checkout_sha":"0123456789abcdef0123456789abcdef01234567","project":{"path_with_namespace":"g/p"}}`), true)
	f.Add(3, "", "k-1", []byte(`{"repository":"a","ref":"refs/x","commit":"0123456789abcdef0123456789abcdef01234567"}`), false)
	f.Add(1, "push", "g", []byte(`{"ref":"refs/heads/\u0000","after":"`+"0123456789abcdef0123456789abcdef01234567"+`"}`), true)
	f.Fuzz(func(t *testing.T, formatIdx int, event, delivery string, body []byte, sign bool) {
		if formatIdx < 0 {
			formatIdx = -formatIdx
		}
		format := api.WebhookFormats[formatIdx%len(api.WebhookFormats)]
		h := http.Header{}
		for _, k := range []string{hdrGitHubEvent, hdrGiteaEvent, hdrGitLabEvent, hdrKilnEvent} {
			h.Set(k, event)
		}
		for _, k := range []string{hdrGitHubDelivery, hdrGiteaDelivery, hdrGitLabDelivery, hdrKilnDelivery} {
			h.Set(k, delivery)
		}
		if sign {
			h.Set(hdrHubSignature, signaturePrefix256+signHMAC(secret, body))
			h.Set(hdrKilnSignature, signaturePrefix256+signHMAC(secret, body))
			h.Set(hdrGitLabToken, string(secret))
		} else {
			h.Set(hdrHubSignature, signaturePrefix256+signHMAC([]byte("another"), body))
			h.Set(hdrKilnSignature, string(body))
			h.Set(hdrGitLabToken, "not-"+string(secret))
		}
		if err := verifyDelivery(format, secret, h, body); (err == nil) != sign {
			t.Fatalf("%s: signed %v, verify says %v", format, sign, err)
		}
		ev, err := parseDelivery(format, h, body)
		if err != nil || ev.ignored != "" {
			return
		}
		if !deliveryRe.MatchString(ev.delivery) || !commitRe.MatchString(ev.commit) || ev.repository == "" || len(ev.ref) < 5 || ev.ref[:5] != "refs/" {
			t.Fatalf("accepted %+v", ev)
		}
		for k, v := range ev.env("h") {
			if err := checkEnvValue(v); err != nil {
				t.Fatalf("env %s=%q: %v", k, v, err)
			}
		}
	})
}
