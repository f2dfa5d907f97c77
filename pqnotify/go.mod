module github.com/leasering/leasering/pqnotify

go 1.24

require (
	github.com/leasering/leasering v0.0.0
	github.com/lib/pq v1.12.3
)

replace github.com/leasering/leasering => ../
