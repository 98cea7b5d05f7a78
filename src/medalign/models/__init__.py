"""medalign.models"""
