package main

import (
	"crypto/sha256"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"time"

	"github.com/fsnotify/fsnotify"
)

// watchDebounce is how long the config file must stay quiet after a
// change before it is reloaded: an editor's save is several events.
const watchDebounce = 200 * time.Millisecond

// watchFile sends on changed (without blocking) once path's content has
// changed and its directory stayed quiet for watchDebounce. It watches
// path's directory, not path: editors and config management replace the
// file (write a new one, rename it over), which ends a watch on the file
// itself, and a Kubernetes ConfigMap swaps a symlink beside it. Any event
// in the directory arms the timer; when it fires, the file is read and
// compared with what it held before. It returns the function that stops
// watching.
func watchFile(path string, changed chan<- struct{}, log *slog.Logger) (func(), error) {
	abs, err := filepath.Abs(path)
	if err != nil {
		return nil, err
	}
	w, err := fsnotify.NewWatcher()
	if err != nil {
		return nil, fmt.Errorf("watch %s: %w", path, err)
	}
	if err := w.Add(filepath.Dir(abs)); err != nil {
		_ = w.Close()
		return nil, fmt.Errorf("watch %s: %w", path, err)
	}
	last := fileSum(abs)
	done := make(chan struct{})
	go func() {
		defer close(done)
		timer := time.NewTimer(time.Hour)
		timer.Stop()
		defer timer.Stop()
		for {
			select {
			case ev, ok := <-w.Events:
				if !ok {
					return
				}
				if !ev.Has(fsnotify.Write | fsnotify.Create | fsnotify.Rename | fsnotify.Remove) {
					continue
				}
				timer.Reset(watchDebounce)
			case err, ok := <-w.Errors:
				if !ok {
					return
				}
				log.Warn("--watch: watching the config file", "err", err)
			case <-timer.C:
				sum := fileSum(abs)
				if sum == last || sum == ([sha256.Size]byte{}) {
					continue // another file in the directory, the same content, or unreadable for now
				}
				last = sum
				select {
				case changed <- struct{}{}:
				default: // a reload is already due; it reads the file as it is then
				}
			}
		}
	}()
	log.Info("watching the config file for changes", "file", abs)
	return func() { _ = w.Close(); <-done }, nil
}

// fileSum is the SHA-256 of path's content (following symlinks); zero
// when it cannot be read, as while it is being replaced.
func fileSum(path string) [sha256.Size]byte {
	data, err := os.ReadFile(path)
	if err != nil {
		return [sha256.Size]byte{}
	}
	return sha256.Sum256(data)
}
