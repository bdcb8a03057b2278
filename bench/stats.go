package main

import (
	"math"
	"slices"
	"time"
)

// distribution summarises latencies, in milliseconds.
type distribution struct {
	Count  int     `json:"count"`
	MeanMS float64 `json:"mean_ms"`
	P50MS  float64 `json:"p50_ms"`
	P95MS  float64 `json:"p95_ms"`
	P99MS  float64 `json:"p99_ms"`
	MaxMS  float64 `json:"max_ms"`
}

// summarize sorts ds and returns its distribution; percentiles are nearest-rank (the
// smallest value with at least p% of the values at or below it), never interpolated.
func summarize(ds []time.Duration) distribution {
	if len(ds) == 0 {
		return distribution{}
	}
	slices.Sort(ds)
	var sum time.Duration
	for _, d := range ds {
		sum += d
	}
	return distribution{
		Count:  len(ds),
		MeanMS: ms(sum / time.Duration(len(ds))),
		P50MS:  ms(percentile(ds, 50)),
		P95MS:  ms(percentile(ds, 95)),
		P99MS:  ms(percentile(ds, 99)),
		MaxMS:  ms(ds[len(ds)-1]),
	}
}

// percentile returns the nearest-rank p-th percentile of sorted.
func percentile(sorted []time.Duration, p float64) time.Duration {
	rank := int(math.Ceil(p / 100 * float64(len(sorted))))
	return sorted[min(max(rank, 1), len(sorted))-1]
}

func ms(d time.Duration) float64 { return round(d.Seconds()*1000, 3) }

// round rounds x to digits decimals, for readable JSON.
func round(x float64, digits int) float64 {
	p := math.Pow(10, float64(digits))
	return math.Round(x*p) / p
}

// perSecond is n per elapsed, 0 when elapsed is not positive.
func perSecond(n int64, elapsed time.Duration) float64 {
	if elapsed <= 0 {
		return 0
	}
	return round(float64(n)/elapsed.Seconds(), 1)
}

// ratio is a/b, 0 when b is 0.
func ratio(a, b float64) float64 {
	if b == 0 {
		return 0
	}
	return round(a/b, 3)
}
