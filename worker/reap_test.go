package worker

import (
	"context"
	"sync/atomic"
	"testing"
	"time"
)

func TestReapAtStartAndOnATimer(t *testing.T) {
	var reaps atomic.Int32
	enough := make(chan struct{})
	ex := &fakeExec{ReapFunc: func(context.Context, func(string) bool) error {
		if reaps.Add(1) == 3 {
			close(enough)
		}
		return nil
	}}
	w, _ := newTestWorker(t, &fakeServer{}, ex, noImages{}, func(c *Config) { c.ReapInterval = 5 * time.Millisecond })
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error)
	go func() { done <- w.Run(ctx) }()
	<-enough // the start-up reap and two periodic ones
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}
