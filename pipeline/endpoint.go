package pipeline

import (
	"errors"
	"fmt"
	"net"
	"net/url"
	"strconv"
	"strings"
)

// CheckOTLPEndpoint checks tracing.endpoint: empty, a URL (http:// or
// https://, as OTEL_EXPORTER_OTLP_ENDPOINT takes it), or host:port. For
// grpc a URL has no path. The error never repeats a password the URL
// may hold.
func CheckOTLPEndpoint(endpoint, protocol string) error {
	e := strings.TrimSpace(endpoint)
	if e == "" {
		return nil
	}
	const want = "want a URL such as http://127.0.0.1:4317 (https:// for TLS) or host:port"
	if strings.Contains(e, "://") {
		u, err := url.Parse(e)
		if err != nil {
			return fmt.Errorf("not a valid URL; %s", want)
		}
		switch u.Scheme {
		case "http", "https":
		default:
			return fmt.Errorf("scheme %q: %s", u.Scheme, want)
		}
		if u.Hostname() == "" {
			return fmt.Errorf("the URL has no host; %s", want)
		}
		if p := u.Port(); p != "" {
			if err := checkPort(p); err != nil {
				return err
			}
		}
		if (protocol == "" || protocol == "grpc") && u.Path != "" && u.Path != "/" {
			return fmt.Errorf("path %q: an OTLP/gRPC endpoint has no path (protocol http takes one)", u.Path)
		}
		if u.RawQuery != "" || u.Fragment != "" {
			return errors.New("a query or fragment has no meaning here")
		}
		return nil
	}
	host, port, err := net.SplitHostPort(e)
	if err != nil || host == "" {
		return fmt.Errorf("neither a URL nor host:port; %s", want)
	}
	if strings.ContainsAny(host, " /@") {
		return fmt.Errorf("host %q: %s", host, want)
	}
	return checkPort(port)
}

func checkPort(p string) error {
	n, err := strconv.Atoi(p)
	if err != nil || n < 1 || n > 65535 {
		return fmt.Errorf("port %q: want 1 to 65535", p)
	}
	return nil
}
