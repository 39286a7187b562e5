package archtest

import (
	"fmt"
	"go/ast"
	"go/parser"
	"go/token"
	"strconv"
	"strings"
)

// brokerKinds are the built-in backend kinds, as strings the engine must
// not compare against.
var brokerKinds = map[string]bool{"memory": true, "redis": true, "gochannel": true}

// BrokerKindBranches reports where Go source of the engine asks which
// broker it has: a comparison or switch on a backend kind's name, or a
// call or test of Durable. Each backend owns its behaviour behind its
// interface, so the engine never needs to. Default values and YAML keys
// are not branches and are not reported.
func BrokerKindBranches(filename string, src []byte) ([]string, error) {
	fset := token.NewFileSet()
	f, err := parser.ParseFile(fset, filename, src, 0)
	if err != nil {
		return nil, err
	}
	var out []string
	report := func(n ast.Node, what string) {
		out = append(out, fmt.Sprintf("%s: %s", fset.Position(n.Pos()), what))
	}
	ast.Inspect(f, func(n ast.Node) bool {
		switch n := n.(type) {
		case *ast.BinaryExpr:
			if n.Op != token.EQL && n.Op != token.NEQ {
				return true
			}
			for _, side := range []ast.Expr{n.X, n.Y} {
				if k, ok := kindLiteral(side); ok {
					report(n, "compares with backend kind "+strconv.Quote(k))
				}
				if isDurable(side) {
					report(n, "compares Durable")
				}
			}
		case *ast.CaseClause:
			for _, e := range n.List {
				if k, ok := kindLiteral(e); ok {
					report(e, "switches on backend kind "+strconv.Quote(k))
				}
			}
		case *ast.IfStmt:
			if isDurable(n.Cond) {
				report(n, "branches on Durable")
			}
			if u, ok := n.Cond.(*ast.UnaryExpr); ok && isDurable(u.X) {
				report(n, "branches on Durable")
			}
		}
		return true
	})
	return out, nil
}

func kindLiteral(e ast.Expr) (string, bool) {
	lit, ok := e.(*ast.BasicLit)
	if !ok || lit.Kind != token.STRING {
		return "", false
	}
	s, err := strconv.Unquote(lit.Value)
	return s, err == nil && brokerKinds[strings.ToLower(s)]
}

// isDurable matches x.Durable, x.Durable() and x.Info().Durable.
func isDurable(e ast.Expr) bool {
	if c, ok := e.(*ast.CallExpr); ok {
		e = c.Fun
	}
	sel, ok := e.(*ast.SelectorExpr)
	return ok && sel.Sel.Name == "Durable"
}
