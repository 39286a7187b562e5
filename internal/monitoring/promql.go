package monitoring

import (
	"slices"
	"strings"
)

// Selector is one metric named in a PromQL expression, with the label
// matchers written in its braces.
type Selector struct {
	Metric   string
	Matchers []Matcher
}

// Matcher is one label matcher, e.g. outcome="delivered" (Op "=").
type Matcher struct {
	Label, Op, Value string
}

// Query is what a PromQL expression names: its metrics and the labels of
// its by, without, on and ignoring clauses.
type Query struct {
	Selectors []Selector
	Grouping  []string
}

// Metrics returns the metric names, sorted and without repeats.
func (q Query) Metrics() []string {
	var out []string
	for _, s := range q.Selectors {
		out = append(out, s.Metric)
	}
	slices.Sort(out)
	return slices.Compact(out)
}

// keywords are PromQL's words that are neither metrics nor functions.
var keywords = map[string]bool{
	"and": true, "or": true, "unless": true, "bool": true, "offset": true,
	"by": true, "without": true, "on": true, "ignoring": true,
	"group_left": true, "group_right": true, "inf": true, "nan": true, "atan2": true,
}

// aggregations are PromQL's aggregation operators, which may be followed by
// a grouping clause before their parenthesis.
var aggregations = map[string]bool{
	"sum": true, "min": true, "max": true, "avg": true, "group": true, "stddev": true, "stdvar": true,
	"count": true, "count_values": true, "bottomk": true, "topk": true, "quantile": true,
}

// groupers are the keywords followed by a parenthesised label list.
var groupers = map[string]bool{"by": true, "without": true, "on": true, "ignoring": true, "group_left": true, "group_right": true}

// ParseQuery finds the metrics and grouping labels of a PromQL expression,
// as Grafana or Prometheus rules write it ($variables allowed). It is a
// scanner, not a parser: it knows strings, braces, ranges, function calls
// and grouping clauses, which is all these files use; promtool checks the
// syntax.
func ParseQuery(expr string) Query {
	var q Query
	s := expr
	i := 0
	skipSpace := func(j int) int {
		for j < len(s) && strings.ContainsRune(" \t\r\n", rune(s[j])) {
			j++
		}
		return j
	}
	for i < len(s) {
		c := s[i]
		switch {
		case c == '"' || c == '\'' || c == '`':
			i = skipString(s, i)
		case c == '[':
			if j := strings.IndexByte(s[i:], ']'); j >= 0 {
				i += j + 1
			} else {
				i = len(s)
			}
		case c == '{':
			// A selector without a metric name: {__name__=...}. Skip it.
			_, i = matchers(s, i)
		case c == '$':
			i++
			for i < len(s) && isIdent(s[i]) {
				i++
			}
		case c >= '0' && c <= '9' || c == '.':
			for i < len(s) && (isIdent(s[i]) || s[i] == '.') {
				i++
			}
		case isIdentStart(c):
			j := i
			for j < len(s) && isIdent(s[j]) {
				j++
			}
			word := s[i:j]
			k := skipSpace(j)
			switch {
			case groupers[strings.ToLower(word)]:
				if k < len(s) && s[k] == '(' {
					end := strings.IndexByte(s[k:], ')')
					if end < 0 {
						end = len(s) - k - 1
					}
					for _, l := range strings.Split(s[k+1:k+end], ",") {
						if l = strings.TrimSpace(l); l != "" {
							q.Grouping = append(q.Grouping, l)
						}
					}
					j = k + end + 1
				}
			case keywords[strings.ToLower(word)], aggregations[strings.ToLower(word)]:
			case k < len(s) && s[k] == '(':
				// A function or aggregation.
			default:
				sel := Selector{Metric: word}
				if k < len(s) && s[k] == '{' {
					sel.Matchers, j = matchers(s, k)
				}
				q.Selectors = append(q.Selectors, sel)
			}
			i = j
		default:
			i++
		}
	}
	return q
}

// matchers parses the matcher list opening at s[i] == '{' and returns it
// with the index after its closing brace.
func matchers(s string, i int) ([]Matcher, int) {
	var out []Matcher
	i++
	for i < len(s) && s[i] != '}' {
		for i < len(s) && strings.ContainsRune(" \t\r\n,", rune(s[i])) {
			i++
		}
		j := i
		for j < len(s) && isIdent(s[j]) {
			j++
		}
		label := s[i:j]
		for j < len(s) && s[j] == ' ' {
			j++
		}
		k := j
		for k < len(s) && strings.ContainsRune("=!~", rune(s[k])) {
			k++
		}
		op := s[j:k]
		for k < len(s) && s[k] == ' ' {
			k++
		}
		if label == "" || op == "" || k >= len(s) || !strings.ContainsRune("\"'`", rune(s[k])) {
			// Not a matcher list this scanner understands: skip to the brace.
			end := strings.IndexByte(s[i:], '}')
			if end < 0 {
				return out, len(s)
			}
			return out, i + end + 1
		}
		e := skipString(s, k)
		out = append(out, Matcher{Label: label, Op: op, Value: unquote(s[k:e])})
		i = e
		for i < len(s) && strings.ContainsRune(" \t\r\n,", rune(s[i])) {
			i++
		}
	}
	return out, min(i+1, len(s))
}

// skipString returns the index after the string literal opening at s[i].
func skipString(s string, i int) int {
	q := s[i]
	for j := i + 1; j < len(s); j++ {
		switch {
		case s[j] == '\\' && q != '`':
			j++
		case s[j] == q:
			return j + 1
		}
	}
	return len(s)
}

func unquote(lit string) string {
	if len(lit) < 2 {
		return lit
	}
	body := lit[1 : len(lit)-1]
	if lit[0] == '`' {
		return body
	}
	return strings.NewReplacer(`\\`, `\`, `\"`, `"`, `\'`, `'`).Replace(body)
}

func isIdentStart(c byte) bool {
	return c == '_' || c == ':' || c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z'
}

func isIdent(c byte) bool { return isIdentStart(c) || c >= '0' && c <= '9' }
