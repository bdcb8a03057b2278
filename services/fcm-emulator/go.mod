module notify/services/fcm-emulator

go 1.26

replace (
	notify/pkg => ../../pkg
	notify/proto => ../../proto
)

require (
	github.com/google/go-cmp v0.7.0
	notify/pkg v0.0.0-00010101000000-000000000000
)
