// promcheck: what `promtool check rules` checks, for Prometheus rule files, built from
// Prometheus' own rule-file parser (model/rulefmt): unknown fields are refused, every
// expr goes through the PromQL parser, every label and annotation is parsed as a
// template, alert and record names are validated. Usage: promcheck FILE...
package main

import (
	"fmt"
	"log/slog"
	"os"

	"github.com/prometheus/common/model"
	"github.com/prometheus/prometheus/model/rulefmt"
	"github.com/prometheus/prometheus/promql/parser"
)

func main() {
	p := parser.NewParser(parser.Options{})
	logger := slog.New(slog.NewTextHandler(os.Stderr, nil))
	failed := false
	for _, path := range os.Args[1:] {
		groups, errs := rulefmt.ParseFile(path, false, model.UTF8Validation, p, logger)
		if len(errs) > 0 {
			failed = true
			for _, e := range errs {
				fmt.Fprintf(os.Stderr, "%v\n", e)
			}
			continue
		}
		n := 0
		for _, g := range groups.Groups {
			n += len(g.Rules)
		}
		fmt.Printf("%s: SUCCESS: %d rules found\n", path, n)
	}
	if failed {
		os.Exit(1)
	}
}
