package main

import (
	"bytes"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"time"
)

// sendCommand posts a payload the way Aquarium's Export button does and
// prints the answer. It exits 1 unless the answer is 2xx.
func sendCommand(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("send", flag.ContinueOnError)
	fs.SetOutput(stderr)
	url := fs.String("url", envOr("LABELPIPE_URL", "http://127.0.0.1:8080/webhook"), "webhook URL (env LABELPIPE_URL)")
	secret := fs.String("secret", envOr("AQ_WEBHOOK_SECRET", "dev-secret"), "X-Aquarium-Secret (env AQ_WEBHOOK_SECRET)")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if fs.NArg() != 1 {
		fmt.Fprintln(stderr, "usage: labelpipe send [--url URL] [--secret S] PAYLOAD.json")
		return 2
	}
	body, err := os.ReadFile(fs.Arg(0))
	if err != nil {
		fmt.Fprintln(stderr, "labelpipe send:", err)
		return 1
	}
	req, err := http.NewRequest(http.MethodPost, *url, bytes.NewReader(body))
	if err != nil {
		fmt.Fprintln(stderr, "labelpipe send:", err)
		return 1
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("X-Aquarium-Secret", *secret)
	resp, err := (&http.Client{Timeout: 60 * time.Second}).Do(req)
	if err != nil {
		fmt.Fprintln(stderr, "labelpipe send:", err)
		return 1
	}
	defer resp.Body.Close()
	answer, _ := io.ReadAll(resp.Body)
	fmt.Fprintf(stdout, "%s\n%s", resp.Status, answer)
	if resp.StatusCode/100 != 2 {
		return 1
	}
	return 0
}

func envOr(k, def string) string {
	if v := os.Getenv(k); v != "" {
		return v
	}
	return def
}
