package scheduler

import (
	"math"
	"net/http"
	"strconv"
	"sync"
	"time"

	"golang.org/x/time/rate"

	"github.com/kiln-build/kiln/api"
)

// rateLimiter keeps a token bucket per key (a token's hash), so that one
// token's burst costs only its own bucket.
type rateLimiter struct {
	limit rate.Limit
	burst int

	mu      sync.Mutex
	buckets map[string]*rate.Limiter
}

// maxBuckets bounds the buckets kept; beyond it, full (idle) buckets are
// dropped, which loses nothing: a new bucket starts full as well.
const maxBuckets = 10000

func newRateLimiter(perSecond float64, burst int) *rateLimiter {
	if perSecond <= 0 {
		return nil
	}
	return &rateLimiter{limit: rate.Limit(perSecond), burst: burst, buckets: map[string]*rate.Limiter{}}
}

// wait takes one request from key's bucket at now; it returns 0 when the
// request may go, else how long until it could.
func (l *rateLimiter) wait(key string, now time.Time) time.Duration {
	if l == nil {
		return 0
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	b, ok := l.buckets[key]
	if !ok {
		if len(l.buckets) >= maxBuckets {
			for k, x := range l.buckets {
				if x.TokensAt(now) >= float64(l.burst) {
					delete(l.buckets, k)
				}
			}
		}
		b = rate.NewLimiter(l.limit, l.burst)
		l.buckets[key] = b
	}
	r := b.ReserveN(now, 1)
	if !r.OK() {
		return time.Hour
	}
	if d := r.DelayFrom(now); d > 0 {
		r.CancelAt(now)
		return d
	}
	return 0
}

// limitFor returns the limiter of p's token kind: workers have buckets
// apart from clients'. The admin token is the operator's own and is not
// limited; enrollment tokens are single use.
func (s *Server) limitFor(p *principal) *rateLimiter {
	switch p.kind {
	case kindWorker:
		return s.workerLimit
	case kindClient:
		return s.clientLimit
	}
	return nil
}

// checkRate answers 429 with Retry-After (whole seconds, at least 1) when
// p's token is over its rate.
func (s *Server) checkRate(w http.ResponseWriter, p *principal) error {
	d := s.limitFor(p).wait(p.hash, s.now())
	if d == 0 {
		return nil
	}
	s.metrics.rateLimited.Inc()
	secs := int64(math.Ceil(d.Seconds()))
	w.Header().Set("Retry-After", strconv.FormatInt(max(secs, 1), 10))
	return errorf(http.StatusTooManyRequests, api.CodeRateLimited, "too many requests with this token; retry in %ds", max(secs, 1))
}
