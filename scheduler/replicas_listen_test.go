package scheduler_test

import (
	"strings"
	"testing"
)

// TestReplicaListensWhenHealthy: a replica serves (here: answers /healthz,
// which StartServerOn waits for) only once it listens for the other
// replicas' notifications, so that a run another replica announces from
// then on reaches its queue at once. Before, it served first and missed
// what was announced meanwhile (issue 29: replica B of
// TestReplicasPlaceGroupApart took a lease long-poll before it
// listened, after A had announced the runs B was to offer).
func TestReplicaListensWhenHealthy(t *testing.T) {
	_, srvs := replicas(t, 2)
	for _, srv := range srvs {
		// No wait here: the counters exist from the moment LISTEN is done.
		text := metricsText(t, srv)
		for _, ch := range []string{chanQueueName, chanRunName, chanAuthName} {
			if !strings.Contains(text, `kiln_replica_notifications_total{channel="`+ch+`"} `) {
				t.Errorf("%s is healthy but does not listen on %s yet", srv.URL, ch)
			}
		}
	}
}
