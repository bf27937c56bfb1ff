// Package logx builds the project's slog loggers: text or JSON, canonical keys, and a
// rate-limited logger for per-packet paths.
package logx
