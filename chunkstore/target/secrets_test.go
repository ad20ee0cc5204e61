package target

import (
	"errors"
	"strings"
	"testing"
)

func TestCredentialsRefused(t *testing.T) {
	const secret = "s3cr3tVALUE"
	for _, s := range []Spec{
		{Kind: S3, URL: "s3://b/p", Options: "endpoint=http://ak:" + secret + "@127.0.0.1:9"},
		{Kind: S3, URL: "http://ak:" + secret + "@127.0.0.1:9/b/p"},
		{Kind: S3, URL: "s3://b/p", Options: "region=r,secret-key=" + secret},
		{Kind: S3, URL: "s3://b/p", Options: "SessionToken=" + secret},
		{Kind: NFS, URL: "u:" + secret + "@127.0.0.1:/export"},
		{Kind: NFS, URL: "127.0.0.1:/export", Options: "password=" + secret},
	} {
		err := s.Check()
		if !errors.Is(err, ErrCredentials) || strings.Contains(err.Error(), secret) {
			t.Errorf("%+v: %v", Spec{Kind: s.Kind}, err)
		}
	}
	for _, u := range []string{"s3://b/p?endpoint=http://ak:" + secret + "@h:9", "s3://b/p?aws_secret_access_key=" + secret, "nfs://u:" + secret + "@h/x", "https://u:" + secret + "@h/b"} {
		if _, err := ParseURL(u); err == nil || strings.Contains(err.Error(), secret) {
			t.Errorf("ParseURL: %v", err)
		}
	}
	// Options that are not credentials still pass.
	if err := (Spec{Kind: S3, URL: "s3://b/p", Options: "endpoint=http://127.0.0.1:9,path-style,region=r,instance-metadata"}).Check(); err != nil {
		t.Errorf("plain options refused: %v", err)
	}
	for in, want := range map[string]string{
		"http://u:" + secret + "@h/x":       "http://REDACTED@h/x",
		"a,secret-key=" + secret + ",b":     "a,secret-key=REDACTED,b",
		"url::u:" + secret + "@h:/e":        "url::REDACTED@h:/e",
		"endpoint=http://h:9000,path-style": "endpoint=http://h:9000,path-style",
	} {
		if got := Redact(in); got != want {
			t.Errorf("Redact(%q) = %q, want %q", in, got, want)
		}
	}
}
