// Package bench is volback's benchmark harness. Each workload is a Config
// struct and a Run function; the volback command only binds flags to them,
// and Go benchmarks next to the code reuse the same image generator.
//
// Comparisons run every tool as a separate process on the same generated
// image in one run, one after another, so they see the same page cache,
// disk and CPU. Each tool's wall time and peak resident memory (from
// rusage) are recorded, and ratios are computed against volback.
package bench
