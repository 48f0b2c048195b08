package main

import (
	"encoding/json"
	"fmt"
	"os"
	"strings"

	"github.com/spf13/cobra"

	"github.com/lucos/lucos/bench"
)

func newBenchCmd() *cobra.Command {
	var gf guestFlags
	var asJSON bool
	var names []string
	for _, s := range bench.Scenarios {
		names = append(names, fmt.Sprintf("  %-6s %s", s.Name, s.Brief))
	}
	cmd := &cobra.Command{
		Use:   "bench SCENARIO... | all",
		Short: "Run benchmark scenarios on real guests and print their numbers",
		Long: "Run benchmark scenarios; each boots real guests under QEMU. Scenarios:\n" + strings.Join(names, "\n") +
			"\n\nResults are distributions from one run (the machine is noisy); docs/BENCHMARKS.md\nholds the last published ones.",
		Args: cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			opts, err := gf.options()
			if err != nil {
				return err
			}
			var run []bench.Scenario
			for _, a := range args {
				if a == "all" {
					run = bench.Scenarios
					break
				}
				s, err := bench.Lookup(a)
				if err != nil {
					return err
				}
				run = append(run, s)
			}
			var results []*bench.Result
			for _, s := range run {
				r, err := s.Run(cmd.Context(), opts, os.Stderr)
				if err != nil {
					return fmt.Errorf("bench %s: %w", s.Name, err)
				}
				results = append(results, r)
			}
			if asJSON {
				enc := json.NewEncoder(os.Stdout)
				enc.SetIndent("", "  ")
				return enc.Encode(results)
			}
			bench.Markdown(os.Stdout, results)
			return nil
		},
	}
	gf.add(cmd)
	cmd.Flags().BoolVar(&asJSON, "json", false, "print results as JSON")
	return cmd
}
