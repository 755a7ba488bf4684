package testvm

import (
	"context"
	"testing"
	"time"
)

func TestGuestBoots(t *testing.T) {
	g := Build(t)
	vm := Start(t, g, Options{})
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	n := vm.Synced()
	if err := vm.WaitSynced(ctx, n+20); err != nil {
		t.Fatal(err)
	}
	t.Logf("console:\n%s", vm.Console())
}
