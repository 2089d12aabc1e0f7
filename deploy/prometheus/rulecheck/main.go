// Command rulecheck validates eventmail's Prometheus artefacts offline with Prometheus' own parsers.
//
//	rulecheck rules FILE...   validate rule files (the checks of `promtool check rules`); exit 1 on errors
//	rulecheck exprs           read a JSON array of PromQL expressions on stdin and print, for each,
//	                          {"error": "...", "metrics": [names it selects]} as a JSON array
//
// The test suite uses it for deploy/prometheus/eventmail-alerts.yaml and the Grafana dashboard's queries.
package main

import (
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"os"
	"sort"

	"github.com/prometheus/common/model"
	"github.com/prometheus/prometheus/model/rulefmt"
	"github.com/prometheus/prometheus/promql/parser"
)

type result struct {
	Error   string   `json:"error,omitempty"`
	Metrics []string `json:"metrics"`
}

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: rulecheck rules FILE... | rulecheck exprs < exprs.json")
		os.Exit(2)
	}
	p := parser.NewParser(parser.Options{})
	switch os.Args[1] {
	case "rules":
		failed := false
		logger := slog.New(slog.NewTextHandler(os.Stderr, nil))
		for _, file := range os.Args[2:] {
			groups, errs := rulefmt.ParseFile(file, false, model.UTF8Validation, p, logger)
			for _, err := range errs {
				fmt.Fprintln(os.Stderr, err)
				failed = true
			}
			if groups != nil && len(errs) == 0 {
				count := 0
				for _, g := range groups.Groups {
					count += len(g.Rules)
				}
				fmt.Printf("%s: %d groups, %d rules\n", file, len(groups.Groups), count)
			}
		}
		if failed {
			os.Exit(1)
		}
	case "exprs":
		input, err := io.ReadAll(os.Stdin)
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		var exprs []string
		if err := json.Unmarshal(input, &exprs); err != nil {
			fmt.Fprintln(os.Stderr, "stdin: a JSON array of strings is expected:", err)
			os.Exit(2)
		}
		results := make([]result, 0, len(exprs))
		for _, text := range exprs {
			results = append(results, check(p, text))
		}
		out, _ := json.Marshal(results)
		fmt.Println(string(out))
	default:
		fmt.Fprintln(os.Stderr, "unknown command:", os.Args[1])
		os.Exit(2)
	}
}

func check(p parser.Parser, text string) result {
	expr, err := p.ParseExpr(text)
	if err != nil {
		return result{Error: err.Error(), Metrics: []string{}}
	}
	seen := map[string]bool{}
	parser.Inspect(expr, func(node parser.Node, _ []parser.Node) error {
		if vs, ok := node.(*parser.VectorSelector); ok {
			name := vs.Name
			if name == "" {
				for _, m := range vs.LabelMatchers {
					if m.Name == model.MetricNameLabel {
						name = m.Value
					}
				}
			}
			if name != "" {
				seen[name] = true
			}
		}
		return nil
	})
	metrics := make([]string, 0, len(seen))
	for name := range seen {
		metrics = append(metrics, name)
	}
	sort.Strings(metrics)
	return result{Metrics: metrics}
}
