package api

import (
	"bytes"
	"net/http/httptest"
	"testing"
)

func FuzzDecodeRequest(f *testing.F) {
	for _, s := range []string{`{"name":"web1","disks":[{"name":"vda","source":"/x"}]}`, `{"times":["02:00"],"every_days":1}`, `{}`, `[]`, `{"a":1}`, `{"name":"x"} trailing`} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		for _, v := range []any{&AddServerRequest{}, &PolicyRequest{}, &CreateBackupRequest{}, &StartRestoreRequest{}, &MountRequest{}, &BindRequest{}} {
			r := httptest.NewRequest("POST", "/v1/x", bytes.NewReader(body))
			_ = decode(r, v)
		}
	})
}
