package extent

import (
	"errors"
	"slices"
	"testing"
)

func TestFromBlocks(t *testing.T) {
	// Blocks of 10 bytes: data, data, zero, data, zero, zero, data...
	pattern := []bool{false, false, true, false, true, true}
	isZero := func(i int64) (bool, error) { return pattern[i%int64(len(pattern))], nil }
	data := func(l int64) Extent { return Extent{Length: l} }
	hole := func(l int64) Extent { return Extent{Length: l, Hole: true, Zero: true} }
	cases := []struct {
		name   string
		off, n int64
		want   []Extent
	}{
		{"runs merge", 0, 60, []Extent{data(20), hole(10), data(10), hole(20)}},
		{"partial first and last block", 15, 20, []Extent{data(5), hole(10), data(5)}},
		{"inside one block", 33, 4, []Extent{data(4)}},
		{"across the pattern's wrap", 40, 40, []Extent{hole(20), data(20)}},
		{"nothing", 10, 0, nil},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			got, err := FromBlocks(tc.off, tc.n, 10, isZero)
			if err != nil || !slices.Equal(got, tc.want) {
				t.Fatalf("FromBlocks(%d, %d) = %v %v, want %v", tc.off, tc.n, got, err, tc.want)
			}
		})
	}
}

// TestFromBlocksBounded: at most Max extents, covering a prefix of the
// range, so that a client can ask again from where the answer ended.
func TestFromBlocksBounded(t *testing.T) {
	alternate := func(i int64) (bool, error) { return i%2 == 1, nil }
	got, err := FromBlocks(0, 3*Max*4, 4, alternate)
	if err != nil || len(got) != Max {
		t.Fatalf("%d extents, %v; want %d", len(got), err, Max)
	}
	var covered int64
	for i, e := range got {
		covered += e.Length
		if e.Length != 4 || e.Zero != (i%2 == 1) {
			t.Fatalf("extent %d: %+v", i, e)
		}
	}
	if covered != Max*4 {
		t.Fatalf("covered %d bytes", covered)
	}
}

func TestFromBlocksError(t *testing.T) {
	bad := errors.New("map damaged")
	_, err := FromBlocks(0, 100, 10, func(i int64) (bool, error) {
		if i == 3 {
			return false, bad
		}
		return false, nil
	})
	if !errors.Is(err, bad) {
		t.Fatalf("error %v, want the block's", err)
	}
}
