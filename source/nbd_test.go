package source

import (
	"context"
	"errors"
	"io"
	"reflect"
	"testing"

	"csbs/nbd"
)

type ext = nbd.StatusExtent

func x(off, n int64, flags uint32) ext { return ext{Offset: off, Length: n, Flags: flags} }

func TestZeroInBoth(t *testing.T) {
	z, d := nbd.StateZero|nbd.StateHole, uint32(0)
	for _, tc := range []struct {
		name string
		a, b []ext
		want []ext
	}{
		{"same answer", []ext{x(0, 10, z), x(10, 5, d)}, []ext{x(0, 10, z), x(10, 5, d)}, []ext{x(0, 10, nbd.StateZero), x(10, 5, 0)}},
		// The second query saw data where the first saw zeros (a guest
		// write was copied to the fleecing overlay in between): data.
		{"second sees data", []ext{x(0, 16, z)}, []ext{x(0, 4, z), x(4, 4, d), x(8, 8, z)}, []ext{x(0, 4, nbd.StateZero), x(4, 4, 0), x(8, 8, nbd.StateZero)}},
		{"first sees data", []ext{x(0, 4, d), x(4, 12, z)}, []ext{x(0, 16, z)}, []ext{x(0, 4, 0), x(4, 12, nbd.StateZero)}},
		{"hole without zero bit is data", []ext{x(0, 8, nbd.StateHole)}, []ext{x(0, 8, nbd.StateHole)}, []ext{x(0, 8, 0)}},
		{"second answer shorter", []ext{x(0, 16, z)}, []ext{x(0, 6, z)}, []ext{x(0, 6, nbd.StateZero)}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := zeroInBoth(tc.a, tc.b); !reflect.DeepEqual(got, tc.want) {
				t.Fatalf("zeroInBoth = %v, want %v", got, tc.want)
			}
		})
	}
}

func TestExtentWindow(t *testing.T) {
	// Status in windows of 100 bytes: data at [30, 50), [90, 130), [250, 260).
	data := [][2]int64{{30, 50}, {90, 130}, {250, 260}}
	fetches := 0
	fetch := func(_ context.Context, pos int64) ([]ext, error) {
		fetches++
		end := min(pos+100, 300)
		var out []ext
		for p := pos; p < end; {
			in, next := false, end
			for _, r := range data {
				if p >= r[0] && p < r[1] {
					in, next = true, min(r[1], end)
					break
				}
				if r[0] > p && r[0] < next {
					next = r[0]
				}
			}
			f := uint32(0)
			if !in {
				f = nbd.StateZero
			}
			out = append(out, ext{Offset: p, Length: next - p, Flags: f})
			p = next
		}
		return out, nil
	}
	var w extentWindow
	want := func(e ext) bool { return e.Flags&nbd.StateZero == 0 }
	var got [][2]int64
	for off := int64(0); ; {
		s, e, err := w.next(context.Background(), off, 300, want, fetch)
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		got = append(got, [2]int64{s, e})
		off = e
	}
	// [90, 130) spans two windows: reported as [90, 100) and [100, 130).
	exp := [][2]int64{{30, 50}, {90, 100}, {100, 130}, {250, 260}}
	if !reflect.DeepEqual(got, exp) {
		t.Fatalf("extents %v, want %v", got, exp)
	}
	if fetches != 3 {
		t.Fatalf("%d block status queries for 3 windows", fetches)
	}
}
