package cleanup

import (
	"context"
	"slices"
	"testing"
)

func TestStack(t *testing.T) {
	tests := []struct {
		name   string
		disarm bool
		want   []int
	}{
		{name: "failure undoes newest first", want: []int{3, 2, 1}},
		{name: "success keeps everything", disarm: true, want: nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var got []int
			var u Stack
			ctx, cancel := context.WithCancel(context.Background())
			cancel() // the set-up's ctx ended: undo still gets a live one
			for i := 1; i <= 3; i++ {
				u.Push(func(ctx context.Context) {
					if ctx.Err() != nil {
						t.Errorf("undo %d: ctx %v", i, ctx.Err())
					}
					got = append(got, i)
				})
			}
			if tt.disarm {
				u.Disarm()
			}
			u.Run(ctx)
			u.Run(ctx) // a second run finds nothing left
			if !slices.Equal(got, tt.want) {
				t.Fatalf("undone %v, want %v", got, tt.want)
			}
		})
	}
}
