package target

import (
	"net/netip"
	"strings"
	"testing"
)

func TestSpecsRoundTrip(t *testing.T) {
	for _, c := range []struct {
		spec Spec
		url  string
	}{
		{Spec{Kind: NFS, URL: "10.0.0.5:/export/backups", Options: "nolock,vers=3,rsize=32768,wsize=32768"},
			"nfs://10.0.0.5/export/backups?nolock&vers=3&rsize=32768&wsize=32768"},
		{Spec{Kind: S3, URL: "s3://bucket/some/prefix", Options: "region=eu-west-1"}, "s3://bucket/some/prefix?region=eu-west-1"},
		{Spec{Kind: S3, URL: "http://127.0.0.1:7070/bucket/p"}, "s3://bucket/p?endpoint=http%3A%2F%2F127.0.0.1%3A7070&path-style"},
		{Spec{Kind: Local, URL: "/srv/backup"}, "/srv/backup"},
	} {
		if err := c.spec.Check(); err != nil {
			t.Fatalf("%+v: %v", c.spec, err)
		}
		if got := c.spec.String(); got != c.url {
			t.Errorf("String(%+v) = %q, want %q", c.spec, got, c.url)
		}
		back, err := ParseURL(c.spec.String())
		if err != nil {
			t.Fatalf("ParseURL(%q): %v", c.spec.String(), err)
		}
		// Same target: the same driver options.
		switch back.Kind {
		case NFS:
			a, _ := c.spec.nfsOptions()
			b, _ := back.nfsOptions()
			if a != b {
				t.Errorf("nfs round trip: %+v != %+v", a, b)
			}
		case S3:
			a, _ := c.spec.s3Options()
			b, _ := back.s3Options()
			if a.Bucket != b.Bucket || a.Prefix != b.Prefix || a.Endpoint != b.Endpoint || a.PathStyle != b.PathStyle || a.Region != b.Region {
				t.Errorf("s3 round trip: %+v != %+v", a, b)
			}
		}
	}
	// Exclusive creates take claims unless the operator vouches for the
	// engine's If-None-Match.
	for opts, want := range map[string]bool{"": false, "create=claim": false, "create=conditional": true} {
		o, err := (Spec{Kind: S3, URL: "s3://b/p", Options: opts}).s3Options()
		if err != nil || o.ConditionalOnly != want {
			t.Errorf("options %q: ConditionalOnly %v (%v), want %v", opts, o.ConditionalOnly, err, want)
		}
	}
	sp, err := ParseURL("nfs://127.0.0.1:2049/e/p?mountport=20048&nolock")
	if err != nil || sp.URL != "127.0.0.1:/e/p" || sp.Options != "port=2049,mountport=20048,nolock" {
		t.Fatalf("nfs url with a port: %+v %v", sp, err)
	}
}

func TestBadSpecs(t *testing.T) {
	for _, c := range []struct {
		spec Spec
		want string
	}{
		{Spec{Kind: S3, URL: "s3://b/p", Options: "region=x,frob=1"}, "not supported: frob=1"},
		{Spec{Kind: S3, URL: "s3://b/p", Options: "secret-key=abc"}, "credentials do not belong"},
		{Spec{Kind: S3, URL: "s3://b/p", Options: "create=maybe"}, "not supported: create=maybe"},
		{Spec{Kind: S3, URL: "http://key:secret@h/b"}, "credentials do not belong"},
		{Spec{Kind: S3, URL: "ftp://h/b"}, "want s3://"},
		{Spec{Kind: S3, URL: "s3:///p"}, "want s3://"},
		{Spec{Kind: S3, URL: "s3://b", Options: "endpoint=nope"}, "http(s) URL"},
		{Spec{Kind: NFS, URL: "h:/e", Options: "vers=4"}, "only NFS version 3"},
		{Spec{Kind: NFS, URL: "nohost"}, "HOST:/EXPORT"},
		{Spec{Kind: "ceph", URL: "x"}, "unknown target kind"},
		{Spec{Kind: Local, URL: "relative"}, "absolute"},
	} {
		if err := c.spec.Check(); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("Check(%+v) = %v, want %q", c.spec, err, c.want)
		}
	}
	if _, err := ParseURL("ftp://x/y"); err == nil {
		t.Error("ParseURL accepted ftp://")
	}
}

func TestSourceAddr(t *testing.T) {
	a, err := SourceAddr(netip.MustParsePrefix("127.0.0.0/8"))
	if err != nil || !a.IsLoopback() {
		t.Fatalf("loopback network: %v %v", a, err)
	}
	if _, err := SourceAddr(netip.MustParsePrefix("198.51.100.0/24")); err == nil || !strings.Contains(err.Error(), "no address of this host is inside the backup network 198.51.100.0/24") {
		t.Fatalf("absent network: %v", err)
	}
}

func FuzzParseURL(f *testing.F) {
	for _, s := range []string{"/srv/x", "nfs://h/e?vers=3", "s3://b/p?endpoint=http://x:1", "nfs://[::1]:2049/e", "s3://b/p?region=&x"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		sp, err := ParseURL(s)
		if err != nil || sp.Kind == Local {
			return
		}
		// A URL that parses describes a target whose canonical form
		// parses to the same canonical form.
		again, err := ParseURL(sp.String())
		if err != nil {
			t.Fatalf("ParseURL(%q) ok, but its String %q does not parse: %v", s, sp.String(), err)
		}
		if again.String() != sp.String() {
			t.Fatalf("%q -> %q -> %q", s, sp.String(), again.String())
		}
	})
}
