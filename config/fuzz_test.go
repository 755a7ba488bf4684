package config

import (
	"os"
	"testing"
)

func FuzzParse(f *testing.F) {
	if b, err := os.ReadFile("../config.example.toml"); err == nil {
		f.Add(b)
	}
	f.Add([]byte("region = \"r\"\n[store]\nblock_size = \"64KiB\"\n"))
	f.Add([]byte("[api]\ntcp_listen = \"127.0.0.1:1\"\ninsecure = true\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		c := Default()
		if err := Parse(data, &c); err == nil {
			// Whatever parses must also validate.
			if err := c.Validate(); err != nil {
				t.Fatalf("Parse accepted a config that Validate refuses: %v", err)
			}
		}
	})
}
