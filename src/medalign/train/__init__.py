"""medalign.train"""
