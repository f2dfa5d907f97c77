module github.com/leasering/leasering/bench

go 1.24

require (
	github.com/leasering/leasering v0.0.0
	github.com/leasering/leasering/pqnotify v0.0.0
	github.com/lib/pq v1.12.3
)

replace (
	github.com/leasering/leasering => ../
	github.com/leasering/leasering/pqnotify => ../pqnotify
)
