module notify/services/sender

go 1.26

replace (
	notify/pkg => ../../pkg
	notify/proto => ../../proto
)
