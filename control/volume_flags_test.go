package control

import (
	"strings"
	"testing"
)

func TestParseVolumeFlag(t *testing.T) {
	const vm = "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb"
	for in, want := range map[string]VolumeSpec{
		"v1=/img":                         {Path: "/img"},
		"v1=/img,type=Root":               {Path: "/img", Type: "Root"},
		"v1=/img,type=Data,vm=" + vm:      {Path: "/img", Type: "Data", VM: vm},
		"v1=/img,vm=" + vm + ",type=Root": {Path: "/img", Type: "Root", VM: vm},
		"v1=/a,b/img":                     {Path: "/a,b/img"},
		"v1=/a,b/img,type=Root":           {Path: "/a,b/img", Type: "Root"},
		"v1=/img,backup=x":                {Path: "/img,backup=x"},
	} {
		id, got, err := ParseVolumeFlag(in)
		if err != nil || id != "v1" || got != want {
			t.Errorf("ParseVolumeFlag(%q) = %q %+v %v; want v1 %+v", in, id, got, err, want)
		}
	}
	for in, want := range map[string]string{
		"v1":                "want UUID=PATH",
		"v1=/img,type=Swap": "want Root or Data",
		"v1=/img,vm=nope":   "vm:",
		"v1=,type=Root":     "no path",
		"bad id=/img":       "volume id",
	} {
		if _, _, err := ParseVolumeFlag(in); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("ParseVolumeFlag(%q) = %v, want an error with %q", in, err, want)
		}
	}
	if _, err := ParseVolumeFlags([]string{"v1=/a", "v1=/b"}); err == nil {
		t.Error("a volume given twice was accepted")
	}
}
