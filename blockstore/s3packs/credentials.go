package s3packs

import (
	"bytes"
	"errors"
	"fmt"
	"log/slog"
	"os"

	"github.com/BurntSushi/toml"
)

// Credentials are an S3 access key. They print, log and marshal as the
// key id's first characters only: the secret must never reach a log, a
// status answer or an error message.
type Credentials struct {
	AccessKeyID     string
	SecretAccessKey string
	SessionToken    string // optional, from AWS_SESSION_TOKEN
	Source          string // where they came from: a file name or "environment"
}

// String hides the secret (and most of the key id).
func (c Credentials) String() string {
	return fmt.Sprintf("access key %s (from %s)", redact(c.AccessKeyID), c.Source)
}

// GoString hides the secret from %#v too.
func (c Credentials) GoString() string { return c.String() }

// LogValue hides the secret from slog.
func (c Credentials) LogValue() slog.Value { return slog.StringValue(c.String()) }

// MarshalText hides the secret from JSON and TOML encoders.
func (c Credentials) MarshalText() ([]byte, error) { return []byte(c.String()), nil }

func redact(id string) string {
	if len(id) <= 4 {
		return "****"
	}
	return id[:4] + "****"
}

// credentialsFile is the TOML file store.s3.credentials_file names.
type credentialsFile struct {
	AccessKeyID     string `toml:"access_key_id"`
	SecretAccessKey string `toml:"secret_access_key"`
}

// LoadCredentials reads the credentials file (TOML with access_key_id and
// secret_access_key, readable by its owner only), or, when file is empty,
// the environment's AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY and
// AWS_SESSION_TOKEN. Errors name the file and the key, never a value.
func LoadCredentials(file string, getenv func(string) string) (Credentials, error) {
	if file == "" {
		c := Credentials{
			AccessKeyID: getenv("AWS_ACCESS_KEY_ID"), SecretAccessKey: getenv("AWS_SECRET_ACCESS_KEY"),
			SessionToken: getenv("AWS_SESSION_TOKEN"), Source: "environment",
		}
		if c.AccessKeyID == "" || c.SecretAccessKey == "" {
			return Credentials{}, errors.New("s3 credentials: store.s3.credentials_file is not set and AWS_ACCESS_KEY_ID or AWS_SECRET_ACCESS_KEY is empty in the environment")
		}
		return c, nil
	}
	fi, err := os.Stat(file)
	if err != nil {
		return Credentials{}, fmt.Errorf("s3 credentials file %s (store.s3.credentials_file): %w", file, err)
	}
	if fi.Mode().Perm()&0o077 != 0 {
		return Credentials{}, fmt.Errorf("s3 credentials file %s (store.s3.credentials_file) is readable by others (mode %04o): chmod 600 it", file, fi.Mode().Perm())
	}
	data, err := os.ReadFile(file)
	if err != nil {
		return Credentials{}, fmt.Errorf("s3 credentials file %s (store.s3.credentials_file): %w", file, err)
	}
	var cf credentialsFile
	md, err := toml.NewDecoder(bytes.NewReader(data)).Decode(&cf)
	if err != nil {
		// The parser's message may quote the offending text: a secret.
		line := 0
		var pe toml.ParseError
		if errors.As(err, &pe) {
			line = pe.Position.Line
		}
		return Credentials{}, fmt.Errorf("s3 credentials file %s (store.s3.credentials_file): not valid TOML near line %d (want access_key_id = \"...\" and secret_access_key = \"...\")", file, line)
	}
	if und := md.Undecoded(); len(und) > 0 {
		return Credentials{}, fmt.Errorf("s3 credentials file %s (store.s3.credentials_file): unknown key %q (want access_key_id and secret_access_key)", file, und[0].String())
	}
	switch {
	case cf.AccessKeyID == "":
		return Credentials{}, fmt.Errorf("s3 credentials file %s (store.s3.credentials_file): access_key_id is missing or empty", file)
	case cf.SecretAccessKey == "":
		return Credentials{}, fmt.Errorf("s3 credentials file %s (store.s3.credentials_file): secret_access_key is missing or empty", file)
	}
	return Credentials{AccessKeyID: cf.AccessKeyID, SecretAccessKey: cf.SecretAccessKey, Source: file}, nil
}
