package main

import "io"

// dlqDispatch is replaced by the dlq command once it lands.
var dlqDispatch = func(args []string, stdout, stderr io.Writer) int {
	io.WriteString(stderr, "labelpipe dlq: not available in this build\n")
	return 2
}
