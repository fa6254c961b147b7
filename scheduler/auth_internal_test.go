package scheduler

import (
	"testing"
	"time"
)

// TestAuthCacheExpires: a cached token is answered until authCacheTTL
// after its lookup, then looked up again (the backstop for a replica that
// missed a revocation's notification); a clear between a miss and its put
// keeps the lookup out of the cache.
func TestAuthCacheExpires(t *testing.T) {
	t0 := time.Unix(1000, 0)
	p := &principal{kind: kindClient, name: "alice"}
	for _, tc := range []struct {
		name  string
		at    time.Time
		clear bool // between the miss and the put
		hit   bool
	}{
		{"fresh", t0, false, true},
		{"just before expiry", t0.Add(authCacheTTL - time.Nanosecond), false, true},
		{"expired", t0.Add(authCacheTTL), false, false},
		{"clock went back", t0.Add(-time.Second), false, false},
		{"cleared while looked up", t0, true, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var c authCache
			_, gen, ok := c.get("h", t0)
			if ok {
				t.Fatal("hit in an empty cache")
			}
			if tc.clear {
				c.clear()
			}
			c.put("h", p, gen, t0)
			got, _, ok := c.get("h", tc.at)
			if ok != tc.hit || (ok && got != p) {
				t.Errorf("get at %v after a put at %v: %v %v, want hit %v", tc.at.Sub(t0), t0, got, ok, tc.hit)
			}
		})
	}
}
