// Package e2e holds notify's end-to-end tests: they build the real service binaries, start
// them against real PostgreSQL and RabbitMQ and the FCM emulator, drive them over gRPC and
// assert on what the emulator received and what the database says.
package e2e
