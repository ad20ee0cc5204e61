package control

import (
	"errors"
	"strings"
	"testing"
)

func TestParseBackupTags(t *testing.T) {
	bt, err := ParseBackupTags([]string{
		"fsInfo::type::nfs::url::172.32.1.119:/nas/nfs2::options::nolock,vers=3,rsize=32768,wsize=32768",
		"volumeLiveBackup::parallelismDegree::1",
		"backup::network::cidr::10.0.0.0/8",
	})
	if err != nil {
		t.Fatal(err)
	}
	if bt.FSInfo == nil || bt.FSInfo.Type != "nfs" || bt.FSInfo.URL != "172.32.1.119:/nas/nfs2" || bt.FSInfo.Options != "nolock,vers=3,rsize=32768,wsize=32768" {
		t.Fatalf("fsInfo: %+v", bt.FSInfo)
	}
	if bt.Parallelism != 1 || bt.NetworkCIDR.String() != "10.0.0.0/8" {
		t.Fatalf("parallelism %d cidr %s", bt.Parallelism, bt.NetworkCIDR)
	}
	bt, err = ParseBackupTags([]string{"fsInfo::type::s3::url::http://[::1]:9000/bucket/prefix"})
	if err != nil || bt.FSInfo.URL != "http://[::1]:9000/bucket/prefix" || bt.FSInfo.Options != "" {
		t.Fatalf("s3 with IPv6 endpoint: %+v %v", bt.FSInfo, err)
	}
	bt, err = ParseBackupTags(nil)
	if err != nil || bt.FSInfo != nil || bt.Parallelism != 0 || bt.NetworkCIDR.IsValid() {
		t.Fatalf("no tags: %+v %v", bt, err)
	}
}

func TestParseBackupTagsRejects(t *testing.T) {
	bad := []string{
		"fsInfo::type::ftp::url::x:/y",
		"fsInfo::type::nfs",
		"fsInfo::type::nfs::url::::options::vers=3",
		"fsInfo::type::nfs::url::hostonly::options::vers=3",
		"fsInfo::type::nfs::url::h:/e::options::vers=3,,nolock",
		"volumeLiveBackup::parallelismDegree::0",
		"volumeLiveBackup::parallelismDegree::65",
		"volumeLiveBackup::parallelismDegree::two",
		"volumeLiveBackup::parallelismDegree::+4",
		"volumeLiveBackup::parallelismDegree::",
		"backup::network::cidr::10.0.0.0",
		"backup::network::cidr::300.0.0.0/8",
		"backup::network::cird::10.0.0.0/8",
		"somethingElse::x",
		"",
	}
	for _, tag := range bad {
		_, err := ParseBackupTags([]string{tag})
		var te *TagError
		isTag := errors.As(err, &te)
		named := tag
		if i := strings.LastIndex(tag, "::"); i >= 0 && isTag && te.Reason == reasonUnknownTag {
			named = tag[:i+2] // an unknown tag is named by its words, not its value
		}
		if !isTag || te.Tag != tag || !strings.Contains(err.Error(), named) {
			t.Errorf("ParseBackupTags(%q): got %v, want a TagError naming it", tag, err)
		}
	}
	dup := []string{"volumeLiveBackup::parallelismDegree::2", "volumeLiveBackup::parallelismDegree::3"}
	if _, err := ParseBackupTags(dup); err == nil || !strings.Contains(err.Error(), "more than once") {
		t.Errorf("duplicate tag: got %v", err)
	}
}

func FuzzParseBackupTags(f *testing.F) {
	f.Add("fsInfo::type::nfs::url::h:/e::options::vers=3", "volumeLiveBackup::parallelismDegree::4")
	f.Add("backup::network::cidr::127.0.0.0/8", "")
	f.Fuzz(func(t *testing.T, a, b string) {
		bt, err := ParseBackupTags([]string{a, b})
		if err != nil {
			var te *TagError
			if !errors.As(err, &te) {
				t.Fatalf("error of type %T: %v", err, err)
			}
			return
		}
		if bt.Parallelism < 0 || bt.Parallelism > MaxParallelism {
			t.Fatalf("parallelism %d accepted", bt.Parallelism)
		}
		if bt.FSInfo != nil && bt.FSInfo.URL == "" {
			t.Fatal("empty url accepted")
		}
	})
}
