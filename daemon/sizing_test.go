package daemon

import (
	"runtime"
	"testing"
)

func TestProcsFor(t *testing.T) {
	for _, c := range []struct{ cpus, want int }{
		{0, 2}, // a nonsense count still runs
		{1, 2},
		{2, 4},
		{8, 16},
		{16, 32},
		{64, 80}, // at most maxExtraProcs beyond the CPUs
	} {
		if got := procsFor(c.cpus); got != c.want {
			t.Errorf("procsFor(%d) = %d, want %d", c.cpus, got, c.want)
		}
	}
}

// TestOversubscribe: GOMAXPROCS in the environment is the operator's
// word and stays; without it the daemon runs procsFor of the CPUs.
func TestOversubscribe(t *testing.T) {
	before := runtime.GOMAXPROCS(0)
	defer runtime.GOMAXPROCS(before)

	runtime.GOMAXPROCS(3)
	t.Setenv("GOMAXPROCS", "3")
	if cpus, procs := Oversubscribe(); cpus != 3 || procs != 3 || runtime.GOMAXPROCS(0) != 3 {
		t.Errorf("with GOMAXPROCS=3 set: cpus %d procs %d, runtime %d; want 3 of each", cpus, procs, runtime.GOMAXPROCS(0))
	}

	for _, env := range []string{"", "0", "many"} { // unset, or a value the runtime ignores too
		runtime.GOMAXPROCS(3)
		t.Setenv("GOMAXPROCS", env)
		if cpus, procs := Oversubscribe(); cpus != 3 || procs != 6 || runtime.GOMAXPROCS(0) != 6 {
			t.Errorf("with GOMAXPROCS=%q: cpus %d procs %d, runtime %d; want 3, 6, 6", env, cpus, procs, runtime.GOMAXPROCS(0))
		}
	}
}
