// Package browsertest runs a real headless Chromium for tests, driven with
// chromedp: Debian's chromium package, found on PATH or at
// /usr/bin/chromium. A missing browser fails the test: browser behaviour
// is never skipped (the Taskfile's deps:chromium installs it).
package browsertest

import (
	"context"
	"os"
	"os/exec"
	"testing"

	"github.com/chromedp/chromedp"
)

// Path finds the browser: $LABELPIPE_CHROMIUM, then chromium,
// chromium-browser or google-chrome on PATH. "" when there is none.
func Path() string {
	if p := os.Getenv("LABELPIPE_CHROMIUM"); p != "" {
		return p
	}
	for _, name := range []string{"chromium", "chromium-browser", "google-chrome", "/usr/bin/chromium"} {
		if p, err := exec.LookPath(name); err == nil {
			return p
		}
	}
	return ""
}

// Start launches a headless browser for the test and returns a chromedp
// context of one tab in it; both end with the test.
func Start(t testing.TB) context.Context {
	t.Helper()
	path := Path()
	if path == "" {
		why := "install the Debian package chromium (`go tool task deps:chromium`), or set LABELPIPE_CHROMIUM"
		if os.Getenv("CI") == "true" {
			why = "CI must install it: .ci/run runs `go tool task test`, whose deps:chromium installs the Debian package chromium"
		}
		t.Fatal("no chromium found for the browser tests: " + why)
	}
	opts := append(chromedp.DefaultExecAllocatorOptions[:],
		chromedp.ExecPath(path),
		chromedp.Headless,
		chromedp.DisableGPU,
		chromedp.NoSandbox, // tests run as root in CI, where the sandbox refuses to start
		chromedp.WindowSize(1400, 1000),
		chromedp.UserDataDir(t.TempDir()),
		chromedp.Flag("disable-dev-shm-usage", true),
	)
	allocCtx, cancelAlloc := chromedp.NewExecAllocator(context.WithoutCancel(t.Context()), opts...)
	ctx, cancel := chromedp.NewContext(allocCtx, chromedp.WithErrorf(t.Logf))
	t.Cleanup(func() {
		cancel()
		cancelAlloc()
	})
	if err := chromedp.Do(ctx); err != nil {
		t.Fatalf("start %s: %v", path, err)
	}
	return ctx
}
