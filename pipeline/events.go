package pipeline

import (
	"fmt"
	"slices"
	"strings"
)

// AquariumEvents are the events Aquarium sends. An event name anywhere in
// a config (a sink's events, a stage's) must be one of these or be
// declared in the config's custom_events: a misspelled one would
// otherwise make every export be answered "200 ignored", which Aquarium
// reads as success.
var AquariumEvents = []string{"issue-exported", "issues-created", "issue-update", "dataset-complete", "dataset-failed"}

// EventNamer is implemented by a stage's config that names events (the
// schema stage's events), so that the loader checks them like a sink's.
type EventNamer interface {
	// EventNames returns the option's field name and the events it lists.
	EventNames() (field string, events []string)
}

// knownEvents is Aquarium's events and the config's custom ones.
func (c *Config) knownEvents() map[string]bool {
	known := map[string]bool{}
	for _, e := range AquariumEvents {
		known[e] = true
	}
	for _, e := range c.CustomEvents {
		known[e] = true
	}
	return known
}

// checkEvents reports each event in events (the list at docPath) that is
// neither Aquarium's nor declared in custom_events.
func (l *loader) checkEvents(known map[string]bool, docPath, label, field string, events []string) {
	for i, ev := range events {
		if ev == "" || known[ev] {
			continue
		}
		msg := fmt.Sprintf("unknown event %q", ev)
		if s := closestEvent(ev, known); s != "" {
			msg += fmt.Sprintf(" (did you mean %q?)", s)
		}
		msg += fmt.Sprintf("; Aquarium sends %s; declare any other in custom_events", strings.Join(AquariumEvents, ", "))
		l.at(fmt.Sprintf("%s.%s[%d]", docPath, field, i), label, fmt.Sprintf("%s[%d]", field, i), msg)
	}
}

// closestEvent is the known event nearest to ev, if it is close enough to
// be a misspelling.
func closestEvent(ev string, known map[string]bool) string {
	best, bestD := "", 3
	names := make([]string, 0, len(known))
	for k := range known {
		names = append(names, k)
	}
	slices.Sort(names)
	for _, k := range names {
		if d := editDistance(strings.ToLower(ev), k); d < bestD {
			best, bestD = k, d
		}
	}
	return best
}

// editDistance is the Levenshtein distance between a and b.
func editDistance(a, b string) int {
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev, cur = cur, prev
	}
	return prev[len(b)]
}

// Warnings are what is legal in the config but probably not meant: today,
// the events (Aquarium's and custom_events) that no sink subscribes to,
// which the webhook answers "200 ignored". validate prints them and run
// logs them at start.
func (c *Config) Warnings() []string {
	subscribed := map[string]bool{}
	for _, s := range c.Sinks {
		for _, ev := range s.Events {
			subscribed[ev] = true
		}
	}
	var none []string
	for _, ev := range append(slices.Clone(AquariumEvents), c.CustomEvents...) {
		if !subscribed[ev] && !slices.Contains(none, ev) {
			none = append(none, ev)
		}
	}
	if len(none) == 0 {
		return nil
	}
	return []string{fmt.Sprintf("no sink subscribes to %s: the webhook answers them 200 ignored", strings.Join(none, ", "))}
}
