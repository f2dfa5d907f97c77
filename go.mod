module github.com/leasering/leasering

go 1.24

require (
	github.com/DATA-DOG/go-sqlmock v1.5.2
	github.com/lib/pq v1.12.3
)
