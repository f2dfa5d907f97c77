// Package prometheus exposes a leasering client's Stats as Prometheus
// metrics. It is a module of its own, so the core library keeps no
// dependency beyond the standard library.
//
//	reg.MustRegister(leaseringprom.NewCollector(client))
package prometheus

import (
	"sort"

	"github.com/leasering/leasering"
	"github.com/prometheus/client_golang/prometheus"
)

// Collector reads Client.Stats at each scrape.
type Collector struct {
	c *leasering.Client

	renewals, async, failures, latency, age, leaseLeft, ringChanges, looks, losses, fenced, owned *prometheus.Desc
}

// NewCollector returns a collector for c. Every metric carries the label
// node (the node id); partitions owned carries ring too.
func NewCollector(c *leasering.Client) *Collector {
	node := []string{"node"}
	d := func(name, help string, labels ...string) *prometheus.Desc {
		return prometheus.NewDesc("leasering_"+name, help, append(node, labels...), nil)
	}
	return &Collector{
		c:           c,
		renewals:    d("renewals_total", "Successful heartbeats."),
		async:       d("async_renewals_total", "Of the successful heartbeats, steady renewals committed without waiting for the disk."),
		failures:    d("renew_failures_total", "Failed or timed-out heartbeats."),
		latency:     d("renew_latency_seconds", "Round trip of the last successful heartbeat."),
		age:         d("last_renew_age_seconds", "Time since the last successful heartbeat was sent."),
		leaseLeft:   d("lease_left_seconds", "Time until the node stops reporting partitions; 0 when not live."),
		ringChanges: d("ring_changes_total", "Ring views received: joins, leaves, handoffs, rebalances."),
		looks:       d("handoff_looks_total", "Heartbeats sent early to hear of partitions handed to this node."),
		losses:      d("lease_losses_total", "Times the lease deadline passed without a renewal."),
		fenced:      d("fenced", "1 once another process took the node id over."),
		owned:       d("partitions_owned", "Partitions owned now.", "ring"),
	}
}

// Describe implements prometheus.Collector.
func (col *Collector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{col.renewals, col.async, col.failures, col.latency, col.age, col.leaseLeft, col.ringChanges, col.looks, col.losses, col.fenced, col.owned} {
		ch <- d
	}
}

// Collect implements prometheus.Collector.
func (col *Collector) Collect(ch chan<- prometheus.Metric) {
	s := col.c.Stats()
	n := s.NodeID
	ch <- prometheus.MustNewConstMetric(col.renewals, prometheus.CounterValue, float64(s.Renewals), n)
	ch <- prometheus.MustNewConstMetric(col.async, prometheus.CounterValue, float64(s.AsyncRenewals), n)
	ch <- prometheus.MustNewConstMetric(col.failures, prometheus.CounterValue, float64(s.RenewFailures), n)
	ch <- prometheus.MustNewConstMetric(col.latency, prometheus.GaugeValue, s.LastRenewLatency.Seconds(), n)
	if s.LastRenewAge >= 0 {
		ch <- prometheus.MustNewConstMetric(col.age, prometheus.GaugeValue, s.LastRenewAge.Seconds(), n)
	}
	ch <- prometheus.MustNewConstMetric(col.leaseLeft, prometheus.GaugeValue, s.LeaseLeft.Seconds(), n)
	ch <- prometheus.MustNewConstMetric(col.ringChanges, prometheus.CounterValue, float64(s.RingChanges), n)
	ch <- prometheus.MustNewConstMetric(col.looks, prometheus.CounterValue, float64(s.HandoffLooks), n)
	ch <- prometheus.MustNewConstMetric(col.losses, prometheus.CounterValue, float64(s.LeaseLosses), n)
	fenced := 0.0
	if s.Fenced {
		fenced = 1
	}
	ch <- prometheus.MustNewConstMetric(col.fenced, prometheus.GaugeValue, fenced, n)
	rings := make([]string, 0, len(s.Owned))
	for r := range s.Owned {
		rings = append(rings, r)
	}
	sort.Strings(rings)
	for _, r := range rings {
		ch <- prometheus.MustNewConstMetric(col.owned, prometheus.GaugeValue, float64(s.Owned[r]), n, r)
	}
}
