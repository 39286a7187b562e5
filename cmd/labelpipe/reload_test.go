package main

import (
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/labelpipe/labelpipe/internal/testutil"
)

// A renewed certificate is served after SIGHUP, without a restart; a
// broken one is refused and the previous one stays.
func TestHUPReloadsTheCertificate(t *testing.T) {
	t.Setenv("AQ_WEBHOOK_SECRET", "")
	cfg, dir := quickstart(t)
	testutil.WriteCert(t, dir, 1)
	data, err := os.ReadFile(cfg)
	if err != nil {
		t.Fatal(err)
	}
	text := strings.Replace(string(data), "  path: /webhook\n",
		"  path: /webhook\n  tls: {cert_file: ../tls.crt, key_file: ../tls.key}\n", 1)
	if err := os.WriteFile(cfg, []byte(text), 0o644); err != nil {
		t.Fatal(err)
	}

	var stdout, stderr testutil.LockedBuffer
	exited := make(chan int, 1)
	go func() { exited <- run([]string{"run", "-c", cfg}, &stdout, &stderr) }()
	t.Cleanup(func() {
		_ = syscall.Kill(os.Getpid(), syscall.SIGTERM)
		<-exited
	})
	addr := waitLog(t, &stderr, exited, regexp.MustCompile(`listener=webhook addr=(127\.0\.0\.1:\d+)`), "labelpipe running")
	if got := testutil.CertSerial(t, addr); got != 1 {
		t.Fatalf("serial %d at start, want 1", got)
	}

	testutil.WriteCert(t, dir, 2)
	hup(t)
	waitLog(t, &stderr, exited, regexp.MustCompile(`(TLS certificate reloaded)`), "")
	if got := testutil.CertSerial(t, addr); got != 2 {
		t.Errorf("serial %d after SIGHUP, want 2", got)
	}

	if err := os.WriteFile(filepath.Join(dir, "tls.crt"), []byte("not a certificate"), 0o600); err != nil {
		t.Fatal(err)
	}
	hup(t)
	waitLog(t, &stderr, exited, regexp.MustCompile(`(reload failed)`), "")
	if got := testutil.CertSerial(t, addr); got != 2 {
		t.Errorf("serial %d after a broken certificate, want 2 still", got)
	}
}

func hup(t *testing.T) {
	t.Helper()
	if err := syscall.Kill(os.Getpid(), syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
}

// waitLog waits (bounded) until the log matches re and holds also, and
// returns re's first group.
func waitLog(t *testing.T, log *testutil.LockedBuffer, exited <-chan int, re *regexp.Regexp, also string) string {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		s := log.String()
		if m := re.FindStringSubmatch(s); m != nil && strings.Contains(s, also) {
			return m[1]
		}
		select {
		case code := <-exited:
			t.Fatalf("run exited %d:\n%s", code, s)
		case <-time.After(5 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			t.Fatalf("log never matched %s:\n%s", re, s)
		}
	}
}

// SIGHUP and, with --watch, a change of the config file reload the config:
// an invalid one is refused with its errors and the running one stays; a
// valid one is taken, and a key that cannot change live is reported.
func TestHUPAndWatchReloadTheConfig(t *testing.T) {
	t.Setenv("AQ_WEBHOOK_SECRET", "")
	cfg, _ := quickstart(t)
	data, err := os.ReadFile(cfg)
	if err != nil {
		t.Fatal(err)
	}
	orig := string(data)

	var stdout, stderr testutil.LockedBuffer
	exited := make(chan int, 1)
	go func() { exited <- run([]string{"run", "-c", cfg, "--watch"}, &stdout, &stderr) }()
	t.Cleanup(func() {
		_ = syscall.Kill(os.Getpid(), syscall.SIGTERM)
		<-exited
	})
	waitLog(t, &stderr, exited, regexp.MustCompile(`(watching the config file)`), "labelpipe running")

	// An editor's save: a new file renamed over the old one.
	replace := func(text string) {
		t.Helper()
		tmp := cfg + ".tmp"
		if err := os.WriteFile(tmp, []byte(text), 0o644); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(tmp, cfg); err != nil {
			t.Fatal(err)
		}
	}
	bad := strings.Replace(orig, "schema: issue-exported", "schema: no-such-schema", 1)
	if bad == orig {
		t.Fatal("quickstart schema stage not found; update the test")
	}
	replace(bad)
	waitCount(t, &stderr, exited, "config reload refused; the running config stays", 1)
	if s := stderr.String(); !strings.Contains(s, "no-such-schema") {
		t.Errorf("the refused config's error is not logged:\n%s", s)
	}

	good := strings.Replace(orig, "ttl: 24h", "ttl: 12h", 1)
	good = strings.Replace(good, "max_body_bytes: 33554432", "max_body_bytes: 1048576", 1)
	if strings.Count(good, "12h")+strings.Count(good, "1048576") < 2 {
		t.Fatal("quickstart dedupe ttl or max_body_bytes not found; update the test")
	}
	replace(good)
	waitCount(t, &stderr, exited, `msg="config reloaded" stages_swapped=true`, 1)
	if s := stderr.String(); !strings.Contains(s, `change needs a restart; left as it was" key=server`) {
		t.Errorf("server.max_body_bytes is not reported as needing a restart:\n%s", s)
	}

	// SIGHUP reloads the file once more: the same config, nothing to swap.
	reloads := strings.Count(stderr.String(), "config reloaded")
	hup(t)
	waitCount(t, &stderr, exited, "SIGHUP: reloading", 1)
	waitCount(t, &stderr, exited, "config reloaded", reloads+1)
	if s := stderr.String(); !strings.Contains(s, "config reloaded; nothing changed that can change live") {
		t.Errorf("the SIGHUP reload of an unchanged file did not say nothing changed:\n%s", s)
	}
}

// waitCount waits (bounded) until the log holds s at least n times.
func waitCount(t *testing.T, log *testutil.LockedBuffer, exited <-chan int, s string, n int) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for strings.Count(log.String(), s) < n {
		select {
		case code := <-exited:
			t.Fatalf("run exited %d:\n%s", code, log.String())
		case <-time.After(5 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			t.Fatalf("log never held %q %d times:\n%s", s, n, log.String())
		}
	}
}

// --watch sees a Kubernetes ConfigMap update: the config file is a symlink
// through ..data, and the update swaps ..data to a new directory.
func TestWatchFollowsAConfigMapSwap(t *testing.T) {
	t.Setenv("AQ_WEBHOOK_SECRET", "")
	src, dir := quickstart(t)
	data, err := os.ReadFile(src)
	if err != nil {
		t.Fatal(err)
	}
	mount := filepath.Join(dir, "configs", "mount")
	version := func(name, text string) {
		t.Helper()
		if err := os.MkdirAll(filepath.Join(mount, name), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(mount, name, "labelpipe.yaml"), []byte(text), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	// The quickstart's relative paths (../out) resolve from mount/ as
	// from configs/: one level below the directory that holds out/.
	text := strings.ReplaceAll(string(data), "../out/", "../../out/")
	version("..v1", text)
	if err := os.Symlink("..v1", filepath.Join(mount, "..data")); err != nil {
		t.Fatal(err)
	}
	cfg := filepath.Join(mount, "labelpipe.yaml")
	if err := os.Symlink(filepath.Join("..data", "labelpipe.yaml"), cfg); err != nil {
		t.Fatal(err)
	}

	var stdout, stderr testutil.LockedBuffer
	exited := make(chan int, 1)
	go func() { exited <- run([]string{"run", "-c", cfg, "--watch"}, &stdout, &stderr) }()
	t.Cleanup(func() {
		_ = syscall.Kill(os.Getpid(), syscall.SIGTERM)
		<-exited
	})
	waitLog(t, &stderr, exited, regexp.MustCompile(`(watching the config file)`), "labelpipe running")

	version("..v2", strings.Replace(text, "ttl: 24h", "ttl: 12h", 1))
	tmp := filepath.Join(mount, "..data_tmp")
	if err := os.Symlink("..v2", tmp); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, filepath.Join(mount, "..data")); err != nil {
		t.Fatal(err)
	}
	waitCount(t, &stderr, exited, `msg="config reloaded" stages_swapped=true`, 1)
}
