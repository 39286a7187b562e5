// Package monitoring holds the tests of the ready-made monitoring in
// configs/monitoring: the Prometheus alert rules (promtool check rules and
// promtool test rules) and the Grafana dashboard, and that every metric
// they name is on a real pipeline's /metrics.
package monitoring
