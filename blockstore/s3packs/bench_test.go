package s3packs

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"sync/atomic"
	"testing"

	"csbs/internal/radosgw"
)

// BenchmarkPutRadosGW times one 16 MiB create-only PUT to a local RADOS
// Gateway (the cost an ingest pays per sealed pack).
func BenchmarkPutRadosGW(b *testing.B) {
	gw := radosgw.Start(b, 0)
	gw.CreateBucket(b, "bench")
	s, err := Open(context.Background(), Config{
		Endpoint: gw.Endpoint, Bucket: "bench", PathStyle: true,
		Credentials: Credentials{AccessKeyID: gw.AccessKey, SecretAccessKey: gw.SecretKey},
	})
	if err != nil {
		b.Fatal(err)
	}
	data := randBytes(16 << 20)
	dir := b.TempDir()
	b.SetBytes(int64(len(data)))
	b.ResetTimer()
	for i := range b.N {
		b.StopTimer()
		p := filepath.Join(dir, "staged")
		if err := os.WriteFile(p, data, 0o600); err != nil {
			b.Fatal(err)
		}
		b.StartTimer()
		if err := s.Put(context.Background(), uint64(i+1), p, int64(len(data))); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkPutRadosGWParallel is BenchmarkPutRadosGW with 4 PUTs at once.
func BenchmarkPutRadosGWParallel(b *testing.B) {
	gw := radosgw.Start(b, 4<<30)
	gw.CreateBucket(b, "bench")
	s, err := Open(context.Background(), Config{
		Endpoint: gw.Endpoint, Bucket: "bench", PathStyle: true,
		Credentials: Credentials{AccessKeyID: gw.AccessKey, SecretAccessKey: gw.SecretKey},
	})
	if err != nil {
		b.Fatal(err)
	}
	data := randBytes(16 << 20)
	dir := b.TempDir()
	var next atomic.Uint64
	b.SetBytes(int64(len(data)))
	b.SetParallelism(2)
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			n := next.Add(1)
			p := filepath.Join(dir, fmt.Sprint(n))
			if err := os.WriteFile(p, data, 0o600); err != nil {
				b.Error(err)
				return
			}
			if err := s.Put(context.Background(), n, p, int64(len(data))); err != nil {
				b.Error(err)
				return
			}
		}
	})
}
