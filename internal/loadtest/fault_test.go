package loadtest

import (
	"testing"
	"time"
)

func TestParseFault(t *testing.T) {
	for _, tt := range []struct {
		in      string
		want    Fault
		wantErr bool
	}{
		{"", Fault{}, false},
		{"hang", Fault{Mode: "hang"}, false},
		{"down=5s", Fault{Mode: "down", For: 5 * time.Second}, false},
		{"slow=200ms", Fault{Mode: "slow", Extra: 200 * time.Millisecond}, false},
		{"down", Fault{}, true},
		{"slow=fast", Fault{}, true},
		{"flaky=1s", Fault{}, true},
	} {
		got, err := ParseFault(tt.in)
		if (err != nil) != tt.wantErr || (!tt.wantErr && got != tt.want) {
			t.Errorf("ParseFault(%q) = %+v, %v; want %+v, error %v", tt.in, got, err, tt.want, tt.wantErr)
		}
	}
}
