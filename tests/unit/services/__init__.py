"""Tests of imgstore.services, package by package."""
