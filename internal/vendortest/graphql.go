package vendortest

import (
	"fmt"
	"strconv"
	"strings"
	"unicode"
)

// A small GraphQL reader: enough of the language (operations, variable
// definitions, fields with aliases and arguments, literal and variable
// values) for the Labelbox fake to check what a sink sends, the way the
// real server would reject it.

// gqlField is one field of a selection set.
type gqlField struct {
	alias, name string
	args        map[string]gqlValue
	sel         []*gqlField
}

// key is the name the field's result is keyed by.
func (f *gqlField) key() string {
	if f.alias != "" {
		return f.alias
	}
	return f.name
}

// gqlValue is a literal (string, float64/int64, bool, nil, enum string,
// []gqlValue, map[string]gqlValue) or a variable reference.
type gqlValue any

type gqlVar string

type gqlEnum string

// gqlDoc is a parsed single-operation document.
type gqlDoc struct {
	kind string // query or mutation
	vars map[string]string
	sel  []*gqlField
}

type gqlParser struct {
	toks []string
	pos  int
}

// parseGraphQL parses a document holding one operation.
func parseGraphQL(src string) (doc *gqlDoc, err error) {
	toks, err := gqlTokens(src)
	if err != nil {
		return nil, err
	}
	p := &gqlParser{toks: toks}
	defer func() {
		if r := recover(); r != nil {
			pe, ok := r.(gqlSyntaxError)
			if !ok {
				panic(r)
			}
			doc, err = nil, pe
		}
	}()
	doc = &gqlDoc{kind: "query", vars: map[string]string{}}
	if p.peek() == "query" || p.peek() == "mutation" || p.peek() == "subscription" {
		doc.kind = p.next()
		if isName(p.peek()) {
			p.next()
		}
		if p.peek() == "(" {
			p.next()
			for p.peek() != ")" {
				p.expect("$")
				name := p.name()
				p.expect(":")
				doc.vars[name] = p.typeRef()
				if p.peek() == "=" {
					p.next()
					p.value()
				}
			}
			p.next()
		}
	}
	doc.sel = p.selectionSet()
	if p.peek() != "" {
		p.fail("only one operation per document is supported here, found %q", p.peek())
	}
	return doc, nil
}

type gqlSyntaxError string

func (e gqlSyntaxError) Error() string { return "Syntax Error: " + string(e) }

func (p *gqlParser) fail(format string, args ...any) {
	panic(gqlSyntaxError(fmt.Sprintf(format, args...)))
}

func (p *gqlParser) peek() string {
	if p.pos < len(p.toks) {
		return p.toks[p.pos]
	}
	return ""
}

func (p *gqlParser) next() string {
	t := p.peek()
	if t == "" {
		p.fail("unexpected end of document")
	}
	p.pos++
	return t
}

func (p *gqlParser) expect(t string) {
	if got := p.next(); got != t {
		p.fail("expected %q, found %q", t, got)
	}
}

func (p *gqlParser) name() string {
	t := p.next()
	if !isName(t) {
		p.fail("expected a name, found %q", t)
	}
	return t
}

func (p *gqlParser) typeRef() string {
	var b strings.Builder
	if p.peek() == "[" {
		p.next()
		b.WriteString("[" + p.typeRef() + "]")
		p.expect("]")
	} else {
		b.WriteString(p.name())
	}
	if p.peek() == "!" {
		p.next()
		b.WriteString("!")
	}
	return b.String()
}

func (p *gqlParser) selectionSet() []*gqlField {
	p.expect("{")
	var out []*gqlField
	for p.peek() != "}" {
		if p.peek() == "..." {
			p.fail("fragments are not supported here")
		}
		f := &gqlField{name: p.name()}
		if p.peek() == ":" {
			p.next()
			f.alias, f.name = f.name, p.name()
		}
		if p.peek() == "(" {
			p.next()
			f.args = map[string]gqlValue{}
			for p.peek() != ")" {
				k := p.name()
				p.expect(":")
				f.args[k] = p.value()
			}
			p.next()
		}
		if p.peek() == "{" {
			f.sel = p.selectionSet()
		}
		out = append(out, f)
	}
	p.next()
	if len(out) == 0 {
		p.fail("empty selection set")
	}
	return out
}

func (p *gqlParser) value() gqlValue {
	t := p.next()
	switch {
	case t == "$":
		return gqlVar(p.name())
	case t == "[":
		var list []gqlValue
		for p.peek() != "]" {
			list = append(list, p.value())
		}
		p.next()
		return list
	case t == "{":
		obj := map[string]gqlValue{}
		for p.peek() != "}" {
			k := p.name()
			p.expect(":")
			obj[k] = p.value()
		}
		p.next()
		return obj
	case strings.HasPrefix(t, `"`):
		s, err := strconv.Unquote(strings.ReplaceAll(t, `\/`, "/"))
		if err != nil {
			p.fail("bad string %s", t)
		}
		return s
	case t == "true", t == "false":
		return t == "true"
	case t == "null":
		return nil
	case isName(t):
		return gqlEnum(t)
	default:
		if i, err := strconv.ParseInt(t, 10, 64); err == nil {
			return float64(i)
		}
		if f, err := strconv.ParseFloat(t, 64); err == nil {
			return f
		}
		p.fail("unexpected %q", t)
	}
	return nil
}

func isName(t string) bool {
	if t == "" {
		return false
	}
	for i, r := range t {
		if !(r == '_' || unicode.IsLetter(r) || (i > 0 && unicode.IsDigit(r))) {
			return false
		}
	}
	return true
}

// gqlTokens splits a document into tokens; commas and comments are
// ignored, as in GraphQL.
func gqlTokens(src string) ([]string, error) {
	var toks []string
	rs := []rune(src)
	for i := 0; i < len(rs); {
		r := rs[i]
		switch {
		case unicode.IsSpace(r) || r == ',' || r == '\ufeff':
			i++
		case r == '#':
			for i < len(rs) && rs[i] != '\n' {
				i++
			}
		case strings.ContainsRune("{}()[]:!$=@|&", r):
			toks = append(toks, string(r))
			i++
		case r == '.':
			if i+2 < len(rs) && rs[i+1] == '.' && rs[i+2] == '.' {
				toks = append(toks, "...")
				i += 3
				continue
			}
			return nil, gqlSyntaxError(fmt.Sprintf("unexpected %q", r))
		case r == '"':
			if i+2 < len(rs) && rs[i+1] == '"' && rs[i+2] == '"' { // block string
				end := strings.Index(string(rs[i+3:]), `"""`)
				if end < 0 {
					return nil, gqlSyntaxError("unterminated block string")
				}
				body := string(rs[i+3:])[:end]
				toks = append(toks, strconv.Quote(body))
				i += 3 + len([]rune(body)) + 3
				continue
			}
			j := i + 1
			for j < len(rs) && rs[j] != '"' {
				if rs[j] == '\\' {
					j++
				}
				if j < len(rs) && rs[j] == '\n' {
					return nil, gqlSyntaxError("unterminated string")
				}
				j++
			}
			if j >= len(rs) {
				return nil, gqlSyntaxError("unterminated string")
			}
			toks = append(toks, string(rs[i:j+1]))
			i = j + 1
		case r == '-' || unicode.IsDigit(r) || r == '_' || unicode.IsLetter(r):
			j := i + 1
			for j < len(rs) && (rs[j] == '_' || rs[j] == '.' || rs[j] == '+' || rs[j] == '-' ||
				unicode.IsLetter(rs[j]) || unicode.IsDigit(rs[j])) {
				if (rs[j] == '+' || rs[j] == '-') && !(rs[j-1] == 'e' || rs[j-1] == 'E') {
					break
				}
				j++
			}
			toks = append(toks, string(rs[i:j]))
			i = j
		default:
			return nil, gqlSyntaxError(fmt.Sprintf("unexpected character %q", r))
		}
	}
	return toks, nil
}

// resolve replaces variable references in v with their values from vars
// (decoded JSON); a missing variable is an error.
func resolve(v gqlValue, vars map[string]any) (any, error) {
	switch x := v.(type) {
	case gqlVar:
		val, ok := vars[string(x)]
		if !ok {
			return nil, fmt.Errorf("variable \"$%s\" was not provided", string(x))
		}
		return val, nil
	case gqlEnum:
		return string(x), nil
	case []gqlValue:
		out := make([]any, len(x))
		for i, e := range x {
			r, err := resolve(e, vars)
			if err != nil {
				return nil, err
			}
			out[i] = r
		}
		return out, nil
	case map[string]gqlValue:
		out := make(map[string]any, len(x))
		for k, e := range x {
			r, err := resolve(e, vars)
			if err != nil {
				return nil, err
			}
			out[k] = r
		}
		return out, nil
	default:
		return x, nil
	}
}

// usedVars lists the variables a selection refers to.
func usedVars(sel []*gqlField, out map[string]bool) {
	var walk func(v gqlValue)
	walk = func(v gqlValue) {
		switch x := v.(type) {
		case gqlVar:
			out[string(x)] = true
		case []gqlValue:
			for _, e := range x {
				walk(e)
			}
		case map[string]gqlValue:
			for _, e := range x {
				walk(e)
			}
		}
	}
	for _, f := range sel {
		for _, a := range f.args {
			walk(a)
		}
		usedVars(f.sel, out)
	}
}
