package qmp_test

import (
	"context"
	"encoding/json"
	"errors"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/volback/volback/dataplane/qmp"
	"github.com/volback/volback/dataplane/qmp/qmptest"
)

func TestQMPAgainstStorageDaemon(t *testing.T) {
	qmptest.Require(t)
	img := filepath.Join(t.TempDir(), "disk.qcow2")
	if out, err := exec.Command("qemu-img", "create", "-f", "qcow2", img, "64M").CombinedOutput(); err != nil {
		t.Fatalf("qemu-img: %v\n%s", err, out)
	}
	d := qmptest.Start(t, "--blockdev", "driver=file,filename="+img+",node-name=file0", "--blockdev", "driver=qcow2,file=file0,node-name=disk0")
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c, err := qmp.Dial(ctx, d.QMP, "test daemon")
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if !c.Version.AtLeast(7, 0) {
		t.Fatalf("version %s", c.Version)
	}
	var nodes []struct {
		NodeName string `json:"node-name"`
		Drv      string `json:"drv"`
	}
	if err := c.Execute(ctx, "query-named-block-nodes", nil, &nodes); err != nil {
		t.Fatal(err)
	}
	found := false
	for _, n := range nodes {
		found = found || (n.NodeName == "disk0" && n.Drv == "qcow2")
	}
	if !found {
		t.Fatalf("nodes: %+v", nodes)
	}
	// Errors keep QEMU's class and name the process.
	err = c.Execute(ctx, "block-dirty-bitmap-add", map[string]any{"node": "nope", "name": "b"}, nil)
	var qe *qmp.Error
	if !errors.As(err, &qe) || qe.Class == "" || qe.Who != "test daemon" {
		t.Fatalf("error: %#v", err)
	}
	if err := c.Execute(ctx, "no-such-command", nil, nil); !errors.As(err, &qe) || qe.Class != "CommandNotFound" {
		t.Fatalf("unknown command: %v", err)
	}
	// Concurrent commands each get their own answer.
	errc := make(chan error, 16)
	for i := 0; i < 16; i++ {
		go func() { errc <- c.Execute(ctx, "query-block-jobs", nil, &[]any{}) }()
	}
	for i := 0; i < 16; i++ {
		if err := <-errc; err != nil {
			t.Fatal(err)
		}
	}
	// Events: a job's life.
	evs, stop := c.Subscribe(func(e qmp.Event) bool { return e.Name == "JOB_STATUS_CHANGE" })
	defer stop()
	if err := c.Execute(ctx, "block-dirty-bitmap-add", map[string]any{"node": "disk0", "name": "b0", "persistent": true}, nil); err != nil {
		t.Fatal(err)
	}
	tgt := filepath.Join(t.TempDir(), "t.qcow2")
	exec.Command("qemu-img", "create", "-f", "qcow2", tgt, "64M").Run()
	if err := c.Execute(ctx, "blockdev-add", map[string]any{"driver": "qcow2", "node-name": "tgt", "file": map[string]any{"driver": "file", "filename": tgt}}, nil); err != nil {
		t.Fatal(err)
	}
	if err := c.Execute(ctx, "blockdev-backup", map[string]any{"job-id": "j0", "device": "disk0", "target": "tgt", "sync": "full"}, nil); err != nil {
		t.Fatal(err)
	}
	for ev := range evs {
		var st struct{ Status string }
		_ = json.Unmarshal(ev.Data, &st)
		if st.Status == "concluded" || st.Status == "null" {
			break
		}
	}
	// The connection ends with the process: waiters are told.
	d.Kill()
	select {
	case <-c.Done():
	case <-time.After(10 * time.Second):
		t.Fatal("the client did not see the process go")
	}
	if err := c.Execute(ctx, "query-block-jobs", nil, nil); !errors.Is(err, qmp.ErrClosed) {
		t.Fatalf("after the process ended: %v", err)
	}
}
