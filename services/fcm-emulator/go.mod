module notify/services/fcm-emulator

go 1.26

replace (
	notify/pkg => ../../pkg
	notify/proto => ../../proto
)
