package main

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
)

// bench --cpuprofile and --memprofile save the daemon's real profiles
// (gzipped protobuf), not the admin listener's 404 page.
func TestBenchSavesProfiles(t *testing.T) {
	dir := t.TempDir()
	bin := filepath.Join(dir, "labelpipe")
	if out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	cpu, mem := filepath.Join(dir, "cpu.prof"), filepath.Join(dir, "mem.prof")
	cmd := exec.Command(bin, "bench", "-n", "40", "-C", "4", "--cpuprofile", cpu, "--memprofile", mem)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if out, err := cmd.Output(); err != nil {
		t.Fatalf("bench: %v\nstdout: %s\nstderr: %s", err, out, stderr.String())
	}
	if bytes.Contains(stderr.Bytes(), []byte("profile:")) {
		t.Errorf("bench reported a profile error:\n%s", stderr.String())
	}
	for _, f := range []string{cpu, mem} {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		if len(b) < 2 || b[0] != 0x1f || b[1] != 0x8b {
			t.Errorf("%s is not a gzipped profile (%d bytes): %.60q", filepath.Base(f), len(b), b)
		}
	}
}
